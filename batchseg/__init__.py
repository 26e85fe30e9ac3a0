"""batchseg: run one segmentation model over thousands of spine MRI studies, tracked in a ledger."""

__version__ = "0.1.0"
