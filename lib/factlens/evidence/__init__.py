"""The evidence: the papers' numbers, intervals, the verdict rule (claims) and the results files."""
