"""`python -m batchseg`: what Slurm tasks exec, so they use the interpreter that submitted them."""
from .cli import main

main()
