"""ndmg-cloud: run the ndmg / m2g connectome pipeline over a whole BIDS dataset on AWS Batch."""

__version__ = "0.1.0"
