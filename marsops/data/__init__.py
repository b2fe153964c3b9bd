"""Mars-terrain data: the course's format, a synthetic generator, cleaning and statistics."""
from .cleaning import CleaningReport, find_outliers
from .course import (CLASS_NAMES, NUM_CLASSES, DataError, MarsData, load, load_npz, load_png_folder, save_npz,
                     write_submission)
from .stats import REPORT_SCALE, class_counts, class_shares, inverse_frequency_weights, split_indices
from .synthetic import COURSE_SHARES, generate, write_npz

__all__ = [
    "CLASS_NAMES", "COURSE_SHARES", "CleaningReport", "DataError", "MarsData", "NUM_CLASSES", "REPORT_SCALE",
    "class_counts", "class_shares", "find_outliers", "generate", "inverse_frequency_weights", "load", "load_npz",
    "load_png_folder", "save_npz", "split_indices", "write_npz", "write_submission",
]
