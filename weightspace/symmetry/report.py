"""A spec as the table ``weightspace spec`` prints (also used by the demo)."""
from __future__ import annotations

from collections import Counter

from .structure import Spec


def spec_table(s: Spec, seconds: float) -> str:
    """The human-readable table `weightspace spec` prints: groups, fixed axes by reason,
    the permutable share and the verification result."""
    lines = [f"{s.arch}  input {list(s.input_shape)}", ""]
    w = max([len(g.name) for g in s.groups] + [5])
    lines.append(f"{'group':<{w}}  {'size':>6}  {'members':>7}  per-block of")
    for g in s.groups:
        lines.append(f"{g.name:<{w}}  {g.size:>6}  {len(g.members):>7}  {g.parent or ''}")
    lines.append("")
    reasons = Counter()
    for f in s.fixed:
        reasons[f.reason] += len(f.members)
    lines.append("fixed axes (parameter axes that are not permuted, by reason):")
    for reason, n in reasons.most_common():
        lines.append(f"  {n:>5}  {reason}")
    lines.append("")
    lines.append(f"groups: {len(s.groups)}  "
                 f"(per-block: {sum(g.parent is not None for g in s.groups)})   "
                 f"permutable hidden units: {100 * s.permutable_fraction:.1f}%")
    if s.verified is None:
        lines.append("verification: skipped")
    else:
        lines.append(f"verification: {'PASSED' if s.verified else 'FAILED'}  "
                     f"(max relative output change {s.max_abs_diff:.2e})")
    for f in s.failures:
        lines.append(f"  ! {f}")
    lines.append(f"time: {seconds:.2f} s")
    return "\n".join(lines)
