"""The benchmark: the published (authors'-style) paths against ours, and what users run end to end, in one
run, on the same inputs. One module per section; each section's ``run(a)`` returns its ``Row``s.

    python -m benchmarks                                  # WRN50, 256x256, batch 32, GPU if there is one
    python -m benchmarks -enc resnet18 -bs 8 --device cpu # a CPU-sized run (python bench.py: the same)

Every timed section warms each path up, then runs all its paths once per round, in an order rotated
every round (so no path always runs first, or right after a given other), over ``--rounds`` rounds. It
reports per path the median speed and its spread (min - max over rounds), and the median (min - max) of
the per-round paired ratio to the section's baseline. The sections call the library (``load_model``,
``Detector``, ``utils.calibration``, the real loaders and commands): what they time is what users run.
Weights are random (seeded): speed does not depend on them, and nothing is downloaded.
"""
