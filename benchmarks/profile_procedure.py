"""Profile complete procedures on the in-memory adapters.

Run ``python -m benchmarks.profile_procedure [-n 200] [--sort cumtime]``.

Prints the cProfile table (cumulative and own time) of ``N`` complete procedures driven through
:class:`~email_change.EmailChangeService`, harness work (reading mails) included but visible as
``world.py`` lines.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

from benchmarks.world import SERIAL, address_form, insured, make_world, new_address


def run(count: int) -> None:
    world = make_world(count)
    service = world.service()
    for n in range(count):
        who = insured(n)
        pid = service.start(who).procedure_id
        service.submit_code(who, pid, world.code(n))
        service.submit_serial(who, pid, SERIAL)
        service.submit_new_address(who, pid, address_form(n))
        service.confirm(world.token(new_address(n).split("@")[0] + "@nouveau.fr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--limit", type=int, default=35)
    args = parser.parse_args()
    profiler = cProfile.Profile()
    profiler.enable()
    run(args.n)
    profiler.disable()
    pstats.Stats(profiler).strip_dirs().sort_stats(args.sort).print_stats(args.limit)


if __name__ == "__main__":
    main()
