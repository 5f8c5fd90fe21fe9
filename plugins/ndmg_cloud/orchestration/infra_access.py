"""Who may deploy the Batch stack: ``ndmg_infra`` changes shared infrastructure (the job
definition's image, the job role, the compute environments), so only deployment admins may
run it, however Airflow's roles are set for the other DAGs.

The admins are the users named in ``NDMG_INFRA_ADMINS`` (comma-separated user names) when it
is set; otherwise, with Airflow's simple auth manager, the users whose role is ``admin`` in
``[core] simple_auth_manager_users``. Another auth manager needs ``NDMG_INFRA_ADMINS``: until
it is set nobody may deploy from Airflow (``ndmg_cloud setup`` still works with the
deployer's own AWS credentials). Checked when a trigger reaches the api-server
(``webapp.AdminOnlyTriggers``: HTTP 403), and again in the task for a run triggered by a
known non-admin of the simple auth manager (``run_refusal``). Runs made on the machine
itself (``airflow dags trigger`` names the OS user, ``dag.test()`` names ``dag_test``) come
from whoever holds the metadata DB, an admin by definition.
"""

from __future__ import annotations

import os

INFRA_ADMINS_ENV = "NDMG_INFRA_ADMINS"


def infra_admins() -> set[str] | None:
    """The user names that may deploy; None when every user may (the simple auth manager's
    all-admins mode, a machine for one person)."""
    from airflow.configuration import conf

    named = os.environ.get(INFRA_ADMINS_ENV, "")
    if named.strip():
        return {name.strip() for name in named.split(",") if name.strip()}
    if "SimpleAuthManager" not in conf.get("core", "auth_manager", fallback=""):
        return set()
    if conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
        return None
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    return {user.username for user in SimpleAuthManager.get_users() if str(user.role).upper() == "ADMIN"}


def deploy_refusal(username: str | None) -> str | None:
    """Why ``username`` may not deploy the Batch stack, or None if they may."""
    admins = infra_admins()
    if admins is None or (username is not None and username in admins):
        return None
    if not admins:
        return f"no deployment admin is named: set {INFRA_ADMINS_ENV} (comma-separated user names) in the Airflow components' environment"
    return (
        f"user {username!r} may not deploy the Batch stack: ndmg_infra is for deployment admins "
        f"({INFRA_ADMINS_ENV}, or the admin role of the simple auth manager); ask one of them"
    )


def run_refusal(triggering_user: str | None) -> str | None:
    """Why a run triggered by ``triggering_user`` may not deploy, if that user is one of the
    simple auth manager's users without the admin role (or not in ``NDMG_INFRA_ADMINS``)."""
    from airflow.configuration import conf

    if not triggering_user or "SimpleAuthManager" not in conf.get("core", "auth_manager", fallback=""):
        return None
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    known = {user.username for user in SimpleAuthManager.get_users()}
    return deploy_refusal(triggering_user) if triggering_user in known else None
