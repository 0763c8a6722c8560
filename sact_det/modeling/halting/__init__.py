"""The halting core shared by SACT (one halting score per position) and ACT (one per image):
``state`` holds the halting arithmetic (cumulative scores, remainders, ponder cost), ``branches`` the
halting-score networks."""
