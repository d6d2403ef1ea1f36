#!/usr/bin/env python3
"""Write a SIPp -inf users file for the registration scenarios.

Users are numbers FIRST..FIRST+N-1 (default 100000..) and the password of
user U is "pw" + U: the rule bench/kamailio/kamailio.cfg applies and the one
bench/register_bench.py uses for the PBX's extensions.

    python3 make_users.py 1000 users.csv              # SEQUENTIAL
    python3 make_users.py 1000 users.csv --random     # RANDOM
    python3 make_users.py 10 bad.csv --wrong-passwords

The file starts with SEQUENTIAL or RANDOM, then "user;password" lines
(field0 = user, field1 = password).
"""

import argparse
import sys

FIRST_USER = 100000


def password_for(user):
    """The password of a benchmark user: "pw" followed by its number."""
    return "pw%s" % (user,)


def user_range(count, first=FIRST_USER):
    return range(first, first + count)


def write_users_csv(path, users, order="SEQUENTIAL", wrong_passwords=False):
    """Write users (an iterable of numbers) to path, SIPp -inf format."""
    if order not in ("SEQUENTIAL", "RANDOM"):
        raise ValueError("order must be SEQUENTIAL or RANDOM")
    n = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(order + "\n")
        for user in users:
            pw = password_for(user)
            if wrong_passwords:
                pw = "not-" + pw
            f.write("%s;%s\n" % (user, pw))
            n += 1
    return n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="number of users")
    parser.add_argument("path", help="CSV file to write")
    parser.add_argument("--first", type=int, default=FIRST_USER,
                        help="first user number (default %(default)s)")
    parser.add_argument("--random", action="store_true",
                        help="RANDOM instead of SEQUENTIAL order")
    parser.add_argument("--wrong-passwords", action="store_true",
                        help="write wrong passwords (for "
                             "register_wrong_password.xml)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("count must be at least 1")
    n = write_users_csv(args.path, user_range(args.count, args.first),
                        "RANDOM" if args.random else "SEQUENTIAL",
                        args.wrong_passwords)
    print("wrote %d users to %s" % (n, args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
