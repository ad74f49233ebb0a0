#!/usr/bin/env python3
"""Writes small, seeded sample data of ten Estonian registries for the demo and the agent's
example (examples/estonia): population register (by county), State Gazette acts, business
register export, land register parcels, tax declarations, court files, health records, identity
documents, vehicle register export and pension register. `--day N` applies a day of change."""
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
        # A day of change: people move within two counties, whose files change; the other
        # counties' files stay byte-identical (each file is smaller than one chunk, so a changed
        # file is stored again whole).
        moves = a.day * 30 if COUNTIES.index(county) in (a.day % len(COUNTIES), (a.day + 3) % len(COUNTIES)) else 0
        for _ in range(moves):
            i = change.randrange(len(rows))
            rows[i] = rows[i].rsplit(";", 1)[0] + f";{change.randrange(1, 400)}\n"
        with open(os.path.join(pop, f"{county}.csv"), "w") as f:
            f.writelines(rows)
    for n in range(200 + a.day * 20):
        with open(os.path.join(gaz, f"act-{n:05d}.xml"), "w") as f:
            words = " ".join(rng.choice(LAST).lower() for _ in range(rng.randrange(200, 2000)))
            f.write(f"<act id='{n}'><title>Act {n}</title><text>{words}</text></act>\n")
    if a.day == 0:  # the business register export is only taken on day 0
        with open(os.path.join(a.out, "business.csv"), "w") as f:
            for i in range(20000):
                f.write(f"{10000000 + i};{rng.choice(LAST)} OU;{rng.choice(COUNTIES)}\n")
    more_registries(a.out, a.day)

def write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)

def streams(name, day):
    """Two random streams for one registry: `base` draws the data that stays the same every day,
    `rng` the day's changes. Each registry has its own pair, so a change in one registry (more
    court cases today) never shifts the data of the others: a day of change stays small."""
    return random.Random(f"{name} base"), random.Random(f"{name} day {day}")

def more_registries(out, day):
    """The other seven registries; each day changes a little of each."""
    base, rng = streams("land", day)
    # Land register (e-Kinnistusraamat): one small JSON document per property unit.
    for county in COUNTIES:
        for n in range(150):
            owner = base.choice(LAST)
            if rng.random() < 0.02 * day:
                owner = rng.choice(LAST)
            write(os.path.join(out, "land", county, f"{county}-{n:05d}.json"),
                  f'{{"unit": "{county}-{n:05d}", "area_m2": {base.randrange(300, 90000)}, "owner": "{owner}"}}\n')
    # Tax and Customs Board (MTA): declarations, one line each (a stream).
    base, rng = streams("tax", day)
    lines = [f"{base.randrange(30000000000, 69999999999)};{2025};{base.randrange(0, 90000)}\n" for _ in range(15000)]
    for _ in range(day * 50):
        lines.append(f"{rng.randrange(30000000000, 69999999999)};2026;{rng.randrange(0, 90000)}\n")
    write(os.path.join(out, "tax.csv"), "".join(lines))
    # Court files (e-File): case documents by year; each day adds five 2026 cases.
    base, rng = streams("court", 0)
    for year in (2024, 2025, 2026):
        for n in range(60 + (day * 5 if year == 2026 else 0)):
            words = " ".join(base.choice(LAST).lower() for _ in range(base.randrange(100, 800)))
            write(os.path.join(out, "court", str(year), f"case-{year}-{n:04d}.txt"),
                  f"Case {year}/{n}\nParties: {base.choice(LAST)} v {base.choice(LAST)}\n{words}\n")
    # Health records: one JSON document per patient, in 50 folders.
    base, rng = streams("health", day)
    for n in range(1500):
        visits = base.randrange(1, 6) + (1 if rng.random() < 0.01 * day else 0)
        write(os.path.join(out, "health", f"{n % 50:02d}", f"patient-{n:06d}.json"),
              f'{{"patient": {n}, "visits": {visits}, "blood": "{base.choice(["A+", "A-", "B+", "O+", "AB+"])}"}}\n')
    # Identity documents: register rows and small binary photo templates.
    base, rng = streams("identity", day)
    rows = [f"{base.randrange(30000000000, 69999999999)};AB{base.randrange(1000000, 9999999)};2030-01-01\n" for _ in range(5000)]
    write(os.path.join(out, "identity", "documents.csv"), "".join(rows))
    for n in range(200):
        write(os.path.join(out, "identity", "photos", f"{n:05d}.bin"),
              bytes(base.getrandbits(8) for _ in range(2048)), "wb")
    # Vehicle register: an export (a stream).
    base, rng = streams("vehicles", day)
    makes = ["Skoda", "Toyota", "Volvo", "VW", "Audi", "Opel"]
    vehicles = [f"{base.randrange(100, 999)}{''.join(base.choice('ABCDEFGHJKLMNPRST') for _ in range(3))};{base.choice(makes)};{base.randrange(1995, 2027)}\n" for _ in range(12000)]
    write(os.path.join(out, "vehicles.csv"), "".join(vehicles))
    # Pension register: monthly payment files.
    base, rng = streams("pension", day)
    for month in range(1, 13):
        rows = [f"{base.randrange(30000000000, 49999999999)};{base.randrange(400, 1600)}\n" for _ in range(800)]
        if month == 12 and day:
            rows += [f"{rng.randrange(30000000000, 49999999999)};{rng.randrange(400, 1600)}\n" for _ in range(day * 10)]
        write(os.path.join(out, "pension", f"2026-{month:02d}.csv"), "".join(rows))

main()
