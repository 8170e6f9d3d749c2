"""Examples of using smlrec from outside the package (see README.md here)."""
