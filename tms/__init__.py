"""The `tms` command line: dispatches to the sweep service (`sweeps`) and the analysis (`analysis`)."""
