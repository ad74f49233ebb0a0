#!/usr/bin/env python3
"""Writes small, seeded sample registry data for the demo: a population register split by county,
State Gazette acts, and a business register export. `--day N` applies a day of change."""
import argparse, os, random

COUNTIES = ["harju", "tartu", "ida-viru", "parnu", "laane-viru", "viljandi", "rapla", "voru"]
FIRST = ["Mari", "Jaan", "Anna", "Peeter", "Kati", "Andres", "Liis", "Toomas", "Eva", "Mart"]
LAST = ["Tamm", "Saar", "Sepp", "Magi", "Kask", "Kukk", "Rebane", "Ilves", "Parn", "Koppel"]

def person_code(rng, born):
    digits = [rng.choice("3456")] + list(born) + [str(rng.randrange(10)) for _ in range(4)]
    return "".join(digits)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--day", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(1918)
    pop = os.path.join(a.out, "population"); os.makedirs(pop, exist_ok=True)
    gaz = os.path.join(a.out, "gazette"); os.makedirs(gaz, exist_ok=True)
    for county in COUNTIES:
        rows = []
        for i in range(6000):
            born = f"{rng.randrange(30, 99):02d}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
            rows.append(f"{person_code(rng, born)};{rng.choice(FIRST)};{rng.choice(LAST)};{county};{rng.randrange(1, 400)}\n")
        change = random.Random(a.day * 7 + len(county))
        for _ in range(a.day * 30):
            i = change.randrange(len(rows))
            rows[i] = rows[i].rsplit(";", 1)[0] + f";{change.randrange(1, 400)}\n"
        with open(os.path.join(pop, f"{county}.csv"), "w") as f:
            f.writelines(rows)
    for n in range(200 + a.day * 20):
        with open(os.path.join(gaz, f"act-{n:05d}.xml"), "w") as f:
            words = " ".join(rng.choice(LAST).lower() for _ in range(rng.randrange(200, 2000)))
            f.write(f"<act id='{n}'><title>Act {n}</title><text>{words}</text></act>\n")
    if a.day > 0:
        return  # the business register export is only taken on day 0
    with open(os.path.join(a.out, "business.csv"), "w") as f:
        for i in range(20000):
            f.write(f"{10000000 + i};{rng.choice(LAST)} OU;{rng.choice(COUNTIES)}\n")

main()
