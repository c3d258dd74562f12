"""Fleet-scale benchmarks (GitHub issue 7): ``make bench`` runs them all, see docs/benchmarks.md."""
