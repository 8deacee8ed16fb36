"""Stage classes per HF model family (as Liger keeps one patch per family)."""
