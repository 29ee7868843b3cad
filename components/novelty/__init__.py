"""One-class novelty detection on small image sets: a check of the detectors outside brain MRI."""
