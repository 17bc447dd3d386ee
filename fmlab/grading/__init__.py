"""Graded labs: question specs, in-notebook checks, the CI grader and student versions.

Explained in book/instructors.md.
"""
from .spec import (Question, Result, expect_close, expect_equal, expect_state_dict,
                   load_questions, to_data)
from .check import checker, checks_path

__all__ = ["Question", "Result", "expect_close", "expect_equal", "expect_state_dict",
           "load_questions", "to_data", "checker", "checks_path"]
