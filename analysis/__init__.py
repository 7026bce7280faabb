"""What training runs mean: row summaries, tables and plots (report), one report per kind of run (modes),
seed statistics (sweep) and the explanation of the 2017 table (explain). Reads the trainers' typed rows
and results documents; imports neither verify nor the commands."""
