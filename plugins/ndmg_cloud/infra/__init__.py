"""The AWS side of a deployment: the CloudFormation template (``ndmg-batch.yaml``, package
data), its deployment, and the IAM policies of the job role and the orchestrator.

Imports ``participant`` and ``core``.
"""
