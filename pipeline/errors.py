"""The one error type a user can cause. The CLI prints it as one line and exits 2."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: `problem` says what is wrong, `fix` what to do."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def line(self) -> str:
        return f"error: {self.problem}" + (f" -- fix: {self.fix}" if self.fix else "")


class BudgetMissed(UserError):
    """The run finished, but a deliverable misses its accuracy budget: not a success (exit 1)."""

    exit_code = 1
