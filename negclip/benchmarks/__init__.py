"""The field's negation benchmarks read from their published files, and a zero-shot check of general ability.

Importing this package registers them with negclip.evaluate, so `python -m negclip evaluate --benchmark`
offers negrefcocog, ccneg, valse-existence and zeroshot.
"""

from negclip.benchmarks import ccneg, negrefcocog, valse, zeroshot
from negclip.evaluate import register

for _module in (negrefcocog, ccneg, valse, zeroshot):
    register(_module.BENCHMARK)

__all__ = ["ccneg", "negrefcocog", "valse", "zeroshot"]
