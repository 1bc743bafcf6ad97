"""Task suites: the built-in bug-fix suite, splits, and loading suites by name or from JSONL.

The built-in suite is made for a tiny policy: every task is one short Python file (one or two
small functions, a one-line docstring each, under 300 characters) with exactly one buggy
line, fixed by replacing that line. The instruction names the file, the function and one
failing check; the hidden ``test_hidden.py`` checks that case and several others.

It is generated from *concepts* (a correct program template, the fragment that is broken and
how, and the calls to test), 6 per family, 7 families. Each concept has pools of function
names and parameter names, and all tasks draw file names from one module pool. One
(function name, parameter names) pair of every concept is reserved for the held-out split, so
a held-out task's code is a combination that no training task has (every single name in it
also appears in training, in other combinations). Per concept: 12 training and 2 held-out
tasks (588 in all, 504 / 84).
For one `seed` the split is fixed; another seed draws other variants, bugs and shown checks and may
reserve another pair for held-out, so tasks move between splits: compare runs made with one seed.
Difficulty: 1 = a three-line function, 2 = a function with a loop or several statements,
3 = two functions (the bug may sit in the helper the named function calls).

Expected values and the buggy behaviour shown in the instruction are computed by running the
templates (our own code) at generation time, so instructions and tests cannot disagree.
"""

from __future__ import annotations

import copy
import json
import math
import random
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from envs.solver import line_fix_solution
from envs.tasks import SPLITS, Task, TaskError

GRADE_COMMAND: tuple[str, ...] = ("python3", "-I", "test_hidden.py")
HIDDEN_TEST_FILE = "test_hidden.py"
MODULES: tuple[str, ...] = ("calc", "mathutils", "helpers", "utils", "core", "ops", "tools", "funcs", "numeric",
                            "compute", "arith", "measure")
TRAIN_PER_CONCEPT = 12
HELDOUT_PER_CONCEPT = 2
MAX_FILE_CHARS = 300


@dataclass(frozen=True)
class _Concept:
    """A correct program template and how to break it.

    Placeholders: ``{f}`` the function the instruction names, ``{h}`` its helper, ``{a}``..``{d}``
    parameter names. `names` entries are ``"f"`` or ``"f/h"``; `params` entries are
    space-separated names for a, b, c, d. The last entry of each is held out.
    """

    difficulty: int
    names: tuple[str, ...]
    params: tuple[str, ...]
    source: str
    bug: tuple[str, tuple[str, ...]]      # (correct fragment, buggy replacements to draw from)
    cases: tuple[tuple[Any, ...], ...]    # arguments of the calls to {f} that the hidden test makes


def _c(difficulty: int, names: str, params: Sequence[str], source: str, bug: tuple[str, Sequence[str]],
       cases: Sequence[tuple[Any, ...]]) -> _Concept:
    return _Concept(difficulty, tuple(names.split()), tuple(params), textwrap.dedent(source).lstrip("\n"),
                    (bug[0], tuple(bug[1])), tuple(cases))


FAMILIES: dict[str, tuple[_Concept, ...]] = {
    "wrong_operator": (
        _c(1, "rect_area rectangle_area area_of_rect box_area", ("width height", "w h", "length breadth"), '''
            def {f}({a}, {b}):
                """Return the area of a {a} by {b} rectangle."""
                return {a} * {b}
            ''', ("return {a} * {b}", ["return {a} + {b}", "return {a} - {b}", "return {a} ** {b}"]),
           [(3, 4), (2, 5), (6, 6), (10, 3), (1, 7)]),
        _c(1, "add sum_two plus combine", ("a b", "x y", "left right"), '''
            def {f}({a}, {b}):
                """Return the sum of {a} and {b}."""
                return {a} + {b}
            ''', ("return {a} + {b}", ["return {a} - {b}", "return {a} * {b}"]),
           [(2, 3), (10, 5), (0, 4), (7, 1), (-2, 6)]),
        _c(2, "total_cost order_total basket_cost bill_amount", ("price count", "unit qty", "cost amount"), '''
            def {f}({a}, {b}):
                """Return the cost of {b} items at {a} each."""
                total = {a} * {b}
                return total
            ''', ("total = {a} * {b}", ["total = {a} + {b}", "total = {a} - {b}"]),
           [(3, 4), (10, 2), (5, 0), (1, 9), (7, 3)]),
        _c(2, "mean average mean_value avg", ("values", "nums", "samples"), '''
            def {f}({a}):
                """Return the mean of the numbers in {a}."""
                total = 0
                for value in {a}:
                    total += value
                return total / len({a})
            ''', ("total += value", ["total -= value", "total *= value"]),
           [([1, 2, 3],), ([4],), ([2, 4, 6, 8],), ([10, 20],), ([5, 5, 5],)]),
        _c(3, "sum_squares/square square_total/sq squares_sum/squared total_of_squares/power2",
           ("x n", "v k", "num limit"), '''
            def {h}({a}):
                """Return {a} squared."""
                return {a} * {a}


            def {f}({b}):
                """Return the sum of the squares of 1 to {b}."""
                return sum({h}(i) for i in range(1, {b} + 1))
            ''', ("return {a} * {a}", ["return {a} + {a}", "return {a} * 2"]),
           [(1,), (2,), (3,), (4,), (5,)]),
        _c(3, "rect_perimeter/double outline_length/twice border_sum/doubled trim_length/times_two",
           ("x w h", "n p q", "v length breadth"), '''
            def {h}({a}):
                """Return {a} doubled."""
                return {a} * 2


            def {f}({b}, {c}):
                """Return the perimeter of a {b} by {c} rectangle."""
                return {h}({b}) + {h}({c})
            ''', ("return {h}({b}) + {h}({c})", ["return {h}({b}) * {h}({c})", "return {h}({b}) - {h}({c})"]),
           [(3, 4), (1, 1), (5, 2), (10, 0), (2, 7)]),
    ),
    "wrong_constant": (
        _c(1, "minutes_to_seconds mins_to_secs to_seconds minutes_in_seconds", ("minutes", "m", "mins"), '''
            def {f}({a}):
                """Return the number of seconds in {a} minutes."""
                return {a} * 60
            ''', ("return {a} * 60", ["return {a} * 50", "return {a} * 6", "return {a} * 600", "return {a} * 100"]),
           [(1,), (2,), (0,), (10,), (3,)]),
        _c(1, "kg_to_grams kilos_to_grams grams_from_kg weight_in_grams", ("kg", "kilos", "mass"), '''
            def {f}({a}):
                """Return {a} kilograms in grams."""
                return {a} * 1000
            ''', ("return {a} * 1000", ["return {a} * 100", "return {a} * 10000", "return {a} * 1024"]),
           [(1,), (2,), (0,), (5,), (12,)]),
        _c(2, "days_to_hours hours_in_days day_hours to_hours", ("days", "d", "n_days"), '''
            def {f}({a}):
                """Return the number of hours in {a} days."""
                hours = {a} * 24
                return hours
            ''', ("hours = {a} * 24", ["hours = {a} * 12", "hours = {a} * 42", "hours = {a} * 20"]),
           [(1,), (2,), (0,), (7,), (3,)]),
        _c(2, "c_to_f celsius_to_fahrenheit to_fahrenheit fahrenheit", ("celsius", "c", "deg"), '''
            def {f}({a}):
                """Convert {a} degrees Celsius to Fahrenheit."""
                scaled = {a} * 9 / 5
                return scaled + 32
            ''', ("return scaled + 32", ["return scaled + 23", "return scaled + 31", "return scaled - 32"]),
           [(0,), (100,), (-40,), (37,), (20,)]),
        _c(3, "hours_to_seconds/minutes_to_secs hrs_to_secs/mins_to_s seconds_in_hours/seconds_in_minutes "
              "hour_seconds/minute_seconds", ("m h", "x y", "mins hrs"), '''
            def {h}({a}):
                """Return the number of seconds in {a} minutes."""
                return {a} * 60


            def {f}({b}):
                """Return the number of seconds in {b} hours."""
                return {h}({b} * 60)
            ''', ("return {a} * 60", ["return {a} * 100", "return {a} * 6", "return {a} * 50"]),
           [(1,), (2,), (0,), (3,), (10,)]),
        _c(3, "dozens/whole count_dozens/floor_int egg_dozens/truncate full_dozens/int_part",
           ("x eggs", "v n", "amount count"), '''
            def {h}({a}):
                """Return {a} rounded down to a whole number."""
                return int({a})


            def {f}({b}):
                """Return how many whole dozens there are in {b} eggs."""
                return {h}({b} / 12)
            ''', ("return {h}({b} / 12)", ["return {h}({b} / 10)", "return {h}({b} / 21)", "return {h}({b} / 6)"]),
           [(24,), (30,), (11,), (0,), (100,)]),
    ),
    "off_by_one": (
        _c(1, "last_item last final_element tail_value", ("items", "xs", "seq"), '''
            def {f}({a}):
                """Return the last element of {a}."""
                return {a}[len({a}) - 1]
            ''', ("return {a}[len({a}) - 1]", ["return {a}[len({a}) - 2]", "return {a}[len({a})]"]),
           [([1, 2, 3],), ([7, 8],), (["a", "b", "c"],), ([5],), ([4, 0, 9, 2],)]),
        _c(1, "count_between inclusive_count span_size range_len", ("lo hi", "start stop", "first last"), '''
            def {f}({a}, {b}):
                """Return how many integers lie between {a} and {b}, inclusive."""
                return {b} - {a} + 1
            ''', ("return {b} - {a} + 1", ["return {b} - {a}", "return {b} - {a} - 1", "return {b} - {a} + 2"]),
           [(1, 5), (3, 3), (0, 9), (10, 20), (-2, 2)]),
        _c(2, "sum_to triangle sum_upto series_total", ("n", "limit", "top"), '''
            def {f}({a}):
                """Return 1 + 2 + ... + {a}."""
                total = 0
                for i in range(1, {a} + 1):
                    total += i
                return total
            ''', ("range(1, {a} + 1)", ["range(1, {a})", "range(2, {a} + 1)", "range(1, {a} - 1)"]),
           [(1,), (3,), (4,), (10,), (0,)]),
        _c(2, "factorial fact product_upto falling_product", ("n", "k", "m"), '''
            def {f}({a}):
                """Return {a} factorial."""
                result = 1
                for i in range(2, {a} + 1):
                    result *= i
                return result
            ''', ("range(2, {a} + 1)", ["range(2, {a})", "range(1, {a})"]),
           [(0,), (1,), (3,), (4,), (5,)]),
        _c(3, "head_sum/head prefix_total/take sum_first/first_n leading_sum/front",
           ("items n", "xs k", "values count"), '''
            def {h}({a}, {b}):
                """Return the first {b} items of {a}."""
                return {a}[:{b}]


            def {f}({a}, {b}):
                """Return the sum of the first {b} items of {a}."""
                return sum({h}({a}, {b}))
            ''', ("return {a}[:{b}]", ["return {a}[:{b} - 1]", "return {a}[:{b} + 1]", "return {a}[1:{b}]"]),
           [([1, 2, 3, 4], 2), ([5, 5, 5], 3), ([10, 20, 30], 1), ([4, 1, 7, 2], 3), ([3, 6], 0)]),
        _c(3, "count_evens/is_even evens_upto/even num_even/even_p even_count/divisible2",
           ("x n", "v k", "num limit"), '''
            def {h}({a}):
                """Return True if {a} is even."""
                return {a} % 2 == 0


            def {f}({b}):
                """Return how many even numbers lie in 0 to {b}, inclusive."""
                return len([i for i in range({b} + 1) if {h}(i)])
            ''', ("range({b} + 1)", ["range({b})", "range(1, {b} + 1)", "range({b} - 1)"]),
           [(0,), (4,), (5,), (10,), (1,)]),
    ),
    "missing_case": (
        _c(1, "safe_div divide ratio quotient", ("a b", "num den", "top bottom"), '''
            def {f}({a}, {b}):
                """Return {a} / {b}, or 0 when {b} is 0."""
                return {a} / {b} if {b} else 0
            ''', ("return {a} / {b} if {b} else 0", ["return {a} / {b}"]),
           [(6, 3), (1, 0), (5, 2), (0, 4), (9, 0)]),
        _c(1, "absolute abs_value magnitude modulus", ("x", "n", "value"), '''
            def {f}({a}):
                """Return the absolute value of {a}."""
                return -{a} if {a} < 0 else {a}
            ''', ("return -{a} if {a} < 0 else {a}", ["return {a}"]),
           [(3,), (-4,), (0,), (-1,), (12,)]),
        _c(2, "mean_or_zero safe_mean average_or_zero mean_default", ("values", "nums", "data"), '''
            def {f}({a}):
                """Return the mean of {a}, or 0 for an empty list."""
                if len({a}) == 0:
                    return 0
                return sum({a}) / len({a})
            ''', ("if len({a}) == 0:", ["if {a} is None:", "if len({a}) < 0:"]),
           [([1, 2, 3],), ([],), ([4],), ([2, 8],)]),
        _c(2, "count_digits digit_count num_digits digits_in", ("n", "number", "value"), '''
            def {f}({a}):
                """Return how many digits {a} has, ignoring any minus sign."""
                text = str(abs({a}))
                return len(text)
            ''', ("text = str(abs({a}))", ["text = str({a})"]),
           [(123,), (-45,), (0,), (-7,), (1000,)]),
        _c(3, "mean_of/total avg_of/sum_all average_of/add_all center/grand_total", ("xs", "nums", "data"), '''
            def {h}({a}):
                """Return the total of the numbers in {a}."""
                return sum({a})


            def {f}({a}):
                """Return the mean of {a}, or 0.0 for an empty list."""
                if not {a}:
                    return 0.0
                return {h}({a}) / len({a})
            ''', ("if not {a}:", ["if {a} is None:"]),
           [([1, 2, 3],), ([],), ([10],), ([2, 4],)]),
        _c(3, "clip_negatives/is_negative zero_negatives/negative floor_at_zero/below_zero "
              "drop_below_zero/under_zero", ("x values", "n nums", "w data"), '''
            def {h}({a}):
                """Return True if {a} is negative."""
                return {a} < 0


            def {f}({b}):
                """Return {b} with every negative number replaced by 0."""
                return [0 if {h}(v) else v for v in {b}]
            ''', ("return [0 if {h}(v) else v for v in {b}]", ["return [v for v in {b}]"]),
           [([1, -2, 3],), ([],), ([-1, -5],), ([4, 0],), ([-3, 2, -1],)]),
    ),
    "wrong_comparison": (
        _c(1, "is_adult can_vote of_age grown_up", ("age", "years", "person_age"), '''
            def {f}({a}):
                """Return True if {a} is 18 or more."""
                return {a} >= 18
            ''', ("return {a} >= 18", ["return {a} > 18", "return {a} <= 18", "return {a} == 18"]),
           [(18,), (17,), (30,), (0,), (19,)]),
        _c(1, "is_positive positive above_zero strictly_positive", ("x", "n", "amount"), '''
            def {f}({a}):
                """Return True if {a} is greater than 0."""
                return {a} > 0
            ''', ("return {a} > 0", ["return {a} >= 0", "return {a} < 0", "return {a} != 0"]),
           [(0,), (5,), (-2,), (1,), (-7,)]),
        _c(2, "larger max_of bigger greater_of", ("a b", "x y", "p q"), '''
            def {f}({a}, {b}):
                """Return the larger of {a} and {b}."""
                if {a} > {b}:
                    return {a}
                return {b}
            ''', ("if {a} > {b}:", ["if {a} < {b}:", "if {a} == {b}:"]),
           [(3, 5), (9, 2), (4, 4), (-1, -6), (0, 7)]),
        _c(2, "count_at_least num_at_least tally_min at_least_count", ("values limit", "xs floor", "scores cutoff"), '''
            def {f}({a}, {b}):
                """Return how many values in {a} are at least {b}."""
                count = 0
                for v in {a}:
                    if v >= {b}:
                        count += 1
                return count
            ''', ("if v >= {b}:", ["if v > {b}:", "if v <= {b}:"]),
           [([1, 5, 3], 3), ([2, 2], 2), ([], 4), ([7, 8, 9], 8), ([1, 2, 3, 9], 3)]),
        _c(3, "count_in_range/in_range how_many_between/between tally_within/within number_inside/inside",
           ("x lo hi xs", "v low high nums", "n floor ceiling data"), '''
            def {h}({a}, {b}, {c}):
                """Return True if {a} is between {b} and {c}, inclusive."""
                return {b} <= {a} <= {c}


            def {f}({d}, {b}, {c}):
                """Return how many items of {d} are in that range."""
                return len([v for v in {d} if {h}(v, {b}, {c})])
            ''', ("return {b} <= {a} <= {c}", ["return {b} < {a} < {c}", "return {b} <= {a} < {c}",
                                                "return {b} < {a} <= {c}"]),
           [([1, 2, 3, 4], 2, 3), ([5], 5, 5), ([0, 10], 1, 9), ([3, 6, 9], 3, 9), ([], 0, 1)]),
        _c(3, "meets_target/mean_score passes_average/average_mark good_enough/mean_grade qualifies/overall_mean",
           ("scores target", "xs bar", "marks threshold"), '''
            def {h}({a}):
                """Return the mean of {a}."""
                return sum({a}) / len({a})


            def {f}({a}, {b}):
                """Return True if the mean of {a} is at least {b}."""
                return {h}({a}) >= {b}
            ''', ("return {h}({a}) >= {b}", ["return {h}({a}) > {b}", "return {h}({a}) <= {b}"]),
           [([2, 4], 3), ([1, 1], 2), ([5, 5, 5], 5), ([10, 0], 6), ([3], 3)]),
    ),
    "swapped_arguments": (
        _c(1, "power raise_to pow_of exponent", ("base exp", "x n", "b e"), '''
            def {f}({a}, {b}):
                """Return {a} raised to the power {b}."""
                return {a} ** {b}
            ''', ("return {a} ** {b}", ["return {b} ** {a}"]),
           [(2, 3), (3, 2), (5, 1), (2, 0), (10, 2)]),
        _c(1, "subtract minus diff take_away", ("a b", "x y", "total part"), '''
            def {f}({a}, {b}):
                """Return {a} minus {b}."""
                return {a} - {b}
            ''', ("return {a} - {b}", ["return {b} - {a}"]),
           [(5, 3), (10, 4), (2, 2), (0, 7), (9, 1)]),
        _c(2, "div_rem quot_rem divide_out split_div", ("a b", "n d", "total size"), '''
            def {f}({a}, {b}):
                """Return the quotient and remainder of {a} divided by {b}."""
                q = {a} // {b}
                r = {a} % {b}
                return q, r
            ''', ("q = {a} // {b}", ["q = {b} // {a}"]),
           [(7, 2), (10, 5), (9, 4), (20, 3), (1, 1)]),
        _c(2, "repeat_word echo_text say_times chorus", ("word n", "text times", "phrase count"), '''
            def {f}({a}, {b}):
                """Return {a} repeated {b} times, separated by spaces."""
                parts = [{a}] * {b}
                return ' '.join(parts)
            ''', ("parts = [{a}] * {b}", ["parts = [{b}] * {a}"]),
           [("ab", 3), ("hi", 1), ("x", 2), ("go", 0)]),
        _c(3, "speed/divide avg_speed/ratio_of pace/per velocity/share",
           ("a b km hours", "x y dist time", "num den length duration"), '''
            def {h}({a}, {b}):
                """Return {a} divided by {b}."""
                return {a} / {b}


            def {f}({c}, {d}):
                """Return the average speed for {c} km driven in {d} hours."""
                return {h}({c}, {d})
            ''', ("return {h}({c}, {d})", ["return {h}({d}, {c})"]),
           [(100, 2), (90, 3), (50, 5), (10, 4), (7, 7)]),
        _c(3, "years_until/minus years_between/sub age_gap/difference wait_years/less",
           ("a b start end", "x y now then", "p q from_year to_year"), '''
            def {h}({a}, {b}):
                """Return {a} minus {b}."""
                return {a} - {b}


            def {f}({c}, {d}):
                """Return how many years from {c} until {d}."""
                return {h}({d}, {c})
            ''', ("return {h}({d}, {c})", ["return {h}({c}, {d})"]),
           [(2000, 2010), (1990, 2024), (2020, 2021), (5, 5), (0, 3)]),
    ),
    "wrong_variable": (
        _c(1, "perimeter frame_length fence_length edge_total", ("width height", "w h", "side_a side_b"), '''
            def {f}({a}, {b}):
                """Return the perimeter of a {a} by {b} rectangle."""
                return 2 * {a} + 2 * {b}
            ''', ("return 2 * {a} + 2 * {b}", ["return 2 * {a} + 2 * {a}", "return 2 * {b} + 2 * {b}"]),
           [(3, 4), (1, 1), (5, 2), (0, 6), (7, 3)]),
        _c(1, "sum3 add_three total3 triple_sum", ("a b c", "x y z", "p q r"), '''
            def {f}({a}, {b}, {c}):
                """Return the sum of {a}, {b} and {c}."""
                return {a} + {b} + {c}
            ''', ("return {a} + {b} + {c}", ["return {a} + {b} + {b}", "return {a} + {a} + {c}",
                                              "return {a} + {c} + {c}"]),
           [(1, 2, 3), (0, 0, 5), (4, 4, 4), (10, 1, 2), (2, 7, 0)]),
        _c(2, "largest max_value biggest top_value", ("values", "nums", "readings"), '''
            def {f}({a}):
                """Return the largest value in {a}."""
                best = {a}[0]
                for v in {a}:
                    if v > best:
                        best = v
                return best
            ''', ("return best", ["return v", "return {a}[0]"]),
           [([3, 1, 2],), ([1, 5, 2],), ([4],), ([2, 9],), ([-3, -1, -2],)]),
        _c(2, "above keep_greater filter_over greater_than", ("values limit", "xs floor", "items threshold"), '''
            def {f}({a}, {b}):
                """Return the values in {a} that are greater than {b}."""
                kept = []
                for v in {a}:
                    if v > {b}:
                        kept.append(v)
                return kept
            ''', ("kept.append(v)", ["kept.append({b})", "kept.append({a})"]),
           [([1, 5, 3], 2), ([], 0), ([7, 8], 9), ([4, 4, 6], 4), ([10, 0, 20], 5)]),
        _c(3, "double_plus/double_it twice_plus/twice_of scaled_sum/times2 boost/dbl",
           ("x a b", "n p q", "v base extra"), '''
            def {h}({a}):
                """Return {a} doubled."""
                return {a} * 2


            def {f}({b}, {c}):
                """Return {b} doubled plus {c}."""
                return {h}({b}) + {c}
            ''', ("return {h}({b}) + {c}", ["return {h}({c}) + {c}", "return {h}({b}) + {b}"]),
           [(3, 1), (0, 5), (2, 2), (10, 0), (4, 7)]),
        _c(3, "total_vowels/vowels vowel_total/count_vowels both_vowels/num_vowels vowel_sum/vowel_count",
           ("s a b", "text first second", "w left right"), '''
            def {h}({a}):
                """Return the number of vowels in {a}."""
                return sum(1 for ch in {a} if ch in 'aeiou')


            def {f}({b}, {c}):
                """Return the total number of vowels in {b} and {c}."""
                return {h}({b}) + {h}({c})
            ''', ("return {h}({b}) + {h}({c})", ["return {h}({b}) + {h}({b})", "return {h}({c}) + {h}({c})"]),
           [("cat", "dog"), ("aa", "b"), ("", "eio"), ("sky", "tree"), ("idea", "x")]),
    ),
}


# ---- generation -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Variant:
    function: str
    helper: str
    params: tuple[str, ...]
    module: str


def _outcome(source: str, function: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    """("returned", value) or ("raised", exception name) of ``function(*args)`` defined by `source`."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<template>", "exec"), namespace)  # noqa: S102 - our own templates
    try:
        return "returned", namespace[function](*copy.deepcopy(args))
    except Exception as exc:  # noqa: BLE001 - the buggy version may raise anything
        return "raised", type(exc).__name__


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] == b[0] == "returned" and isinstance(a[1], float) and isinstance(b[1], (int, float)):
        return type(a[1]) is type(b[1]) and math.isclose(a[1], b[1])
    return a == b and type(a[1]) is type(b[1])


def _show(value: Any) -> str:
    """A value as the instruction shows it (floats rounded to 4 places, so 34.6, not 34.599999999999994)."""
    return repr(round(value, 4)) if isinstance(value, float) else repr(value)


def _call_text(function: str, args: tuple[Any, ...]) -> str:
    return f"{function}({', '.join(repr(arg) for arg in args)})"


def _hidden_test(module: str, function: str, cases: Sequence[tuple[tuple[Any, ...], Any]]) -> str:
    """A unittest file: one test per case; the module is imported inside each test so that an
    import-time ``sys.exit`` fails the test instead of ending the run."""
    lines = [f'"""Hidden tests for {module}.py (never shown to the agent)."""', "import os", "import sys",
             "import unittest", "", "sys.path.append(os.getcwd())", "", "",
             "class HiddenTest(unittest.TestCase):"]
    for index, (args, expected) in enumerate(cases):
        check = "assertAlmostEqual" if isinstance(expected, float) else "assertEqual"
        lines += [f"    def test_case_{index}(self):",
                  f"        from {module} import {function}",
                  f"        self.{check}({_call_text(function, args)}, {expected!r})", ""]
    lines += ["", 'if __name__ == "__main__":', "    unittest.main()", ""]
    return "\n".join(lines)


def _make_task(family: str, concept: _Concept, variant: _Variant, split: str, task_id: str,
               rng: random.Random) -> Task:
    names = dict(zip("abcd", variant.params), f=variant.function, h=variant.helper)
    good = concept.source.format(**names)
    old = concept.bug[0].format(**names)
    new = rng.choice(concept.bug[1]).format(**names)
    lines = good.splitlines()
    hits = [i for i, line in enumerate(lines) if old in line]
    if len(hits) != 1 or lines[hits[0]].count(old) != 1:
        raise AssertionError(f"{task_id}: the bug fragment {old!r} must occur exactly once in the template")
    fixed_line = lines[hits[0]]
    buggy_line = fixed_line.replace(old, new)
    lines[hits[0]] = buggy_line
    bad = "\n".join(lines) + "\n"
    if bad.count(buggy_line) != 1 or len(bad) >= MAX_FILE_CHARS:
        raise _TooLong(f"{task_id}: the buggy line must be unique and the file under {MAX_FILE_CHARS} chars")
    cases, failing = [], []
    for args in concept.cases:
        want, got = _outcome(good, variant.function, args), _outcome(bad, variant.function, args)
        if want[0] != "returned":
            raise AssertionError(f"{task_id}: the correct template raised {want[1]} on {args!r}")
        cases.append((args, want[1]))
        if not _same(want, got):
            failing.append((args, want[1], got))
    if not failing:
        raise AssertionError(f"{task_id}: no test case tells the buggy version from the correct one")
    args, expected, (kind, value) = rng.choice(failing)
    shown = _show(value) if kind == "returned" else value
    path = f"{variant.module}.py"
    instruction = (f"Fix the bug in {path}: {_call_text(variant.function, args)} {kind} {shown}, "
                   f"expected {_show(expected)}.")
    return Task(task_id=task_id, family=family, split=split, difficulty=concept.difficulty,
                instruction=instruction, files={path: bad},
                hidden_tests={HIDDEN_TEST_FILE: _hidden_test(variant.module, variant.function, cases)},
                grade_command=GRADE_COMMAND, solution=line_fix_solution(path, buggy_line, fixed_line))


class _TooLong(AssertionError):
    """A name combination that breaks the task shape (file too long or buggy line not unique)."""


def _variants(concept: _Concept, rng: random.Random) -> dict[str, list[_Variant]]:
    """The name/parameter/module combinations of each split, shuffled by `rng`.

    One (function name, parameter names) pair of every concept is reserved for the held-out
    split: a held-out task's code is a combination no training task has, while every name in it
    also occurs, in other combinations, in training (the policy must read the file, not recall it)."""
    pairs = [(name, params) for name in concept.names for params in concept.params]
    rng.shuffle(pairs)
    out: dict[str, list[_Variant]] = {}
    for split, chosen in (("heldout", pairs[:1]), ("train", pairs[1:])):
        combos = []
        for name, params in chosen:
            function, _, helper = name.partition("/")
            combos += [_Variant(function, helper, tuple(params.split()), m) for m in MODULES]
        rng.shuffle(combos)
        out[split] = combos
    return out


def builtin_suite(seed: int = 0) -> list[Task]:
    """The built-in bug-fix suite (588 tasks, 7 families, fixed train/held-out split); deterministic."""
    tasks = []
    for family, concepts in FAMILIES.items():
        number = 0
        for index, concept in enumerate(concepts):
            rng = random.Random(f"horizonrl-suite-{seed}-{family}-{index}")
            variants = _variants(concept, rng)
            for split, count in (("train", TRAIN_PER_CONCEPT), ("heldout", HELDOUT_PER_CONCEPT)):
                made = 0
                for variant in variants[split]:
                    if made == count:
                        break
                    try:
                        task = _make_task(family, concept, variant, split, f"{family}-{number:04d}", rng)
                    except _TooLong:
                        continue  # this name combination makes the file too long: draw the next one
                    tasks.append(task)
                    made, number = made + 1, number + 1
                if made < count:
                    raise AssertionError(f"{family} concept {index}: only {made} valid {split} variants")
    return tasks


def split_suite(tasks: Sequence[Task], split: str) -> list[Task]:
    """The tasks of one split ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [task for task in tasks if task.split == split]


# ---- loading --------------------------------------------------------------------------------

class SuiteSpec(Protocol):
    """What names a suite (``rl.config.SuiteConfig`` fits): "builtin", "leaky" (the built-in tasks with
    their expected answers leaked into the sandbox, :mod:`envs.leak`), a path to a .jsonl file or
    to a directory of task dirs (see :mod:`envs.loaders`)."""

    name: str
    seed: int
    families: Sequence[str]   # empty = all families
    exploit_demo_fraction: float   # "leaky" only: the share of tasks whose demonstration is the exploit


def load_tasks_jsonl(path: Path) -> list[Task]:
    """Tasks from a JSON-lines file (one :meth:`Task.to_dict` per line); errors name the line."""
    tasks = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                tasks.append(Task.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TaskError) as exc:
                raise TaskError(f"{path}:{number}: {exc}") from None
    return tasks


def save_tasks_jsonl(tasks: Sequence[Task], path: Path) -> None:
    """Write tasks as JSON lines (the format :func:`load_tasks_jsonl` reads)."""
    with open(path, "w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(json.dumps(task.to_dict(), ensure_ascii=False) + "\n")


def load_suite(spec: SuiteSpec, split: str) -> list[Task]:
    """The tasks of `split` from the suite `spec` names, restricted to `spec.families` if given."""
    if spec.exploit_demo_fraction and spec.name != "leaky":
        raise ValueError(f"exploit_demo_fraction applies to the 'leaky' suite only (suite {spec.name!r})")
    if spec.name == "builtin":
        tasks = builtin_suite(spec.seed)
    elif spec.name == "leaky":
        from envs.leak import leaky_suite   # envs.leak builds on this module

        tasks = leaky_suite(spec.seed, spec.exploit_demo_fraction)
    elif spec.name.endswith(".jsonl") or Path(spec.name).is_dir():
        from envs.loaders import load_tasks   # native or SWE-bench JSONL, Terminal-Bench task dirs

        tasks = list(load_tasks(Path(spec.name)).tasks)
    else:
        raise ValueError(f"unknown suite {spec.name!r}: use 'builtin', 'leaky', a path to a .jsonl task file (native or "
                         "SWE-bench style) or a directory of Terminal-Bench style tasks")
    if spec.families:
        known = {task.family for task in tasks}
        unknown = sorted(set(spec.families) - known)
        if unknown:
            raise ValueError(f"suite {spec.name!r} has no family {', '.join(unknown)}; it has {', '.join(sorted(known))}")
        tasks = [task for task in tasks if task.family in spec.families]
    ids = [task.task_id for task in tasks]
    if len(set(ids)) != len(ids):
        raise TaskError(f"suite {spec.name!r} has duplicate task ids")
    return split_suite(tasks, split)

