"""The schedule language: parse (lark) -> AST (frozen dataclasses) -> validate -> format."""

from homec.schedule.ast import Program, Schedule, ScheduleError
from homec.schedule.fmt import format_program
from homec.schedule.parse import parse_file, parse_text
from homec.schedule.validate import validate

__all__ = ["Program", "Schedule", "ScheduleError", "format_program", "parse_file", "parse_text",
           "validate"]
