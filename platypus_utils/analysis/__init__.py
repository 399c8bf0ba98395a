"""Stage 06_analysis: tables, figures, clean-subset scores and the summary report; entry points in `stage`."""
