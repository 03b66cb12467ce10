"""Benchmark of recipient search: 100,000 generated parties, build time, memory and latency.

Run: ``python benchmarks/search_parties.py [--parties N] [--seed S]``. The parties are plausible
Norwegian ones (municipalities, legekontor, sykehus with avdelinger, services, persons), made by a
seeded random generator so runs compare. Prints index build time, memory the index holds, and
p50/p99 per query kind (HER-id, organisation number, prefix, typo, folded æøå).

With ``--store`` the parties are also written to a fresh SQLite store (in a temporary folder) and
read back with ``registry.store.load_index``: the path a restarted server takes. It prints the
write time, the load-and-index time and checks that searches over the loaded index give the same
hits as over the in-memory one.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc

from meldingstjener.registry.parties import CodedValue, CommunicationParty, PartyType
from meldingstjener.registry.search import PartyIndex

MUNICIPALITIES = [
    "Oslo",
    "Bergen",
    "Trondheim",
    "Stavanger",
    "Kristiansand",
    "Drammen",
    "Fredrikstad",
    "Tromsø",
    "Sandnes",
    "Sarpsborg",
    "Skien",
    "Ålesund",
    "Sandefjord",
    "Haugesund",
    "Tønsberg",
    "Moss",
    "Porsgrunn",
    "Bodø",
    "Arendal",
    "Hamar",
    "Larvik",
    "Halden",
    "Lillehammer",
    "Molde",
    "Harstad",
    "Gjøvik",
    "Kongsberg",
    "Narvik",
    "Alta",
    "Bærum",
    "Asker",
    "Lørenskog",
    "Ullensaker",
    "Lillestrøm",
    "Nordre Follo",
    "Øygarden",
    "Askøy",
    "Karmøy",
    "Steinkjer",
    "Levanger",
    "Namsos",
    "Førde",
    "Sogndal",
    "Voss",
    "Stord",
    "Kvinnherad",
    "Tysnes",
    "Røros",
    "Oppdal",
    "Orkland",
    "Hammerfest",
    "Vadsø",
    "Kirkenes",
    "Mo i Rana",
    "Mosjøen",
    "Brønnøy",
    "Vågan",
    "Sortland",
    "Finnsnes",
    "Elverum",
    "Kongsvinger",
    "Hønefoss",
    "Notodden",
    "Egersund",
    "Flekkefjord",
    "Mandal",
    "Grimstad",
    "Lyngdal",
    "Åsnes",
    "Tynset",
    "Fauske",
    "Lærdal",
]
ORGANISATION_KINDS = [
    "legekontor",
    "legesenter",
    "helsesenter",
    "kommune",
    "tannlegesenter",
    "fysioterapi",
    "legevakt",
    "sykehjem",
    "omsorgssenter",
    "apotek",
    "jordmortjeneste",
]
HOSPITAL_UNITS = [
    "Akuttmottak",
    "Barneavdeling",
    "Fødeavdeling",
    "Kirurgisk avdeling",
    "Medisinsk avdeling",
    "Ortopedisk avdeling",
    "Psykiatrisk poliklinikk",
    "Radiologisk avdeling",
    "Laboratorium",
    "Nevrologisk avdeling",
    "Øre-nese-hals",
    "Kreftavdeling",
    "Hjerteavdeling",
    "Lungeavdeling",
]
MUNICIPAL_SERVICES = [
    ("Legevakt", "01"),
    ("Hjemmetjenesten", "02"),
    ("Helsestasjon", "03"),
    ("Sykehjem", "04"),
    ("Fastlege", "05"),
    ("Psykisk helse og rus", "06"),
    ("Tildelingskontor", "07"),
    ("Jordmortjeneste", "08"),
    ("Fysioterapitjenesten", "09"),
    ("Kommuneoverlege", "10"),
]
FIRST_NAMES = [
    "Ole",
    "Kari",
    "Per",
    "Anne",
    "Lars",
    "Ingrid",
    "Jon",
    "Marit",
    "Bjørn",
    "Solveig",
    "Knut",
    "Åse",
    "Øystein",
    "Siri",
    "Håkon",
    "Tove",
    "Eirik",
    "Ragnhild",
    "Trond",
    "Hege",
    "Geir",
    "Liv",
    "Arne",
    "Astrid",
    "Terje",
    "Kjersti",
    "Sverre",
    "Bodil",
    "Nils",
    "Gunn",
    "Jørgen",
    "Mette",
    "Ståle",
    "Linn",
    "Pål",
    "Tonje",
    "Espen",
    "Ida",
    "Magnus",
    "Nora",
    "Jonas",
    "Emma",
]
LAST_NAMES = [
    "Hansen",
    "Johansen",
    "Olsen",
    "Larsen",
    "Andersen",
    "Pedersen",
    "Nilsen",
    "Kristiansen",
    "Jensen",
    "Karlsen",
    "Johnsen",
    "Pettersen",
    "Eriksen",
    "Berg",
    "Haugen",
    "Hagen",
    "Johannessen",
    "Andreassen",
    "Jacobsen",
    "Dahl",
    "Jørgensen",
    "Halvorsen",
    "Henriksen",
    "Lund",
    "Sørensen",
    "Jakobsen",
    "Moen",
    "Gundersen",
    "Iversen",
    "Strand",
    "Solberg",
    "Svendsen",
    "Eide",
    "Knutsen",
    "Martinsen",
    "Paulsen",
    "Bakken",
    "Kristoffersen",
    "Mathisen",
    "Lie",
    "Amundsen",
    "Nguyen",
    "Rasmussen",
    "Ali",
    "Lunde",
    "Solheim",
    "Berntsen",
    "Moe",
    "Kristensen",
    "Bakke",
    "Ødegård",
    "Aasen",
    "Rønning",
    "Sæther",
    "Fjeld",
    "Brekke",
    "Ås",
    "Vik",
    "Myhre",
    "Tveit",
    "Nygård",
    "Holm",
    "Engen",
    "Lien",
    "Bø",
    "Nordby",
    "Røed",
]


def generate(count: int, seed: int) -> list[CommunicationParty]:
    rng = random.Random(seed)
    parties: list[CommunicationParty] = []
    next_her_id = 100000
    next_org = 900000000

    def her() -> str:
        nonlocal next_her_id
        next_her_id += rng.randint(1, 7)
        return str(next_her_id)

    while len(parties) < count:
        place = rng.choice(MUNICIPALITIES)
        roll = rng.random()
        next_org += rng.randint(1, 50)
        org_number = str(next_org)
        if roll < 0.08:
            org_name = f"Helse {place} sykehus"
            units: list[tuple[str, str | None]] = [
                (u, None) for u in rng.sample(HOSPITAL_UNITS, rng.randint(4, 10))
            ]
        elif roll < 0.3:
            org_name = f"{place} kommune"
            units = list(rng.sample(MUNICIPAL_SERVICES, rng.randint(3, 8)))
        else:
            kind = rng.choice(ORGANISATION_KINDS)
            owner = rng.choice(LAST_NAMES) if rng.random() < 0.4 else place
            org_name = f"{owner} {kind}"
            units = []
        org_her = her()
        parties.append(
            CommunicationParty(
                her_id=org_her,
                party_type=PartyType.ORGANISATION,
                name=org_name.upper() if rng.random() < 0.3 else org_name,
                organisation_number=org_number,
                edi_address=f"{org_her}@edi.nhn.no",
                active=rng.random() > 0.05,
            )
        )
        for unit, code in units:
            parties.append(
                CommunicationParty(
                    her_id=her(),
                    party_type=PartyType.SERVICE,
                    name=unit,
                    parent_her_id=org_her,
                    parent_name=org_name,
                    parent_organisation_number=org_number,
                    service_types=(CodedValue(code, unit, "8666"),) if code else (),
                    edi_address=f"{org_her}@edi.nhn.no",
                )
            )
        for _ in range(rng.randint(0, 6)):
            first = rng.choice(FIRST_NAMES)
            middle = f" {rng.choice(FIRST_NAMES)}" if rng.random() < 0.3 else ""
            parties.append(
                CommunicationParty(
                    her_id=her(),
                    party_type=PartyType.PERSON,
                    name=f"{first}{middle} {rng.choice(LAST_NAMES)}",
                    parent_her_id=org_her,
                    parent_name=org_name,
                    parent_organisation_number=org_number,
                )
            )
    return parties[:count]


def typo(rng: random.Random, text: str) -> str:
    """One random edit in the longest word: swap, drop or replace a letter."""
    words = text.split()
    index = max(range(len(words)), key=lambda i: len(words[i]))
    word = words[index]
    if len(word) < 5:
        return text
    position = rng.randint(1, len(word) - 2)
    edit = rng.choice(("swap", "drop", "replace"))
    if edit == "swap":
        word = word[:position] + word[position + 1] + word[position] + word[position + 2 :]
    elif edit == "drop":
        word = word[:position] + word[position + 1 :]
    else:
        word = word[:position] + rng.choice("aeiouklmnrst") + word[position + 1 :]
    words[index] = word
    return " ".join(words)


def strip_norwegian(text: str) -> str:
    return text.replace("ø", "o").replace("æ", "ae").replace("å", "aa").replace("Ø", "O")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, default=100_000, help="how many parties")
    parser.add_argument("--seed", type=int, default=20240613, help="random seed")
    parser.add_argument("--queries", type=int, default=300, help="queries per kind")
    parser.add_argument(
        "--store", action="store_true", help="also measure loading the index from a SQLite store"
    )
    args = parser.parse_args()

    parties = generate(args.parties, args.seed)
    gc.collect()
    # Memory in a separate build: tracemalloc slows building several times over.
    tracemalloc.start()
    measured = PartyIndex(parties)
    held_bytes, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del measured
    gc.collect()
    started = time.perf_counter()
    index = PartyIndex(parties)
    index.search("warm up")  # sorts the vocabulary once, as the first real query would
    build_seconds = time.perf_counter() - started
    print(f"parties: {len(index):,}")
    print(f"index build: {build_seconds:.2f} s")
    print(f"index memory (excluding the party objects): {held_bytes / 1e6:.0f} MB")

    rng = random.Random(args.seed + 1)
    orgs = [p for p in parties if p.party_type is PartyType.ORGANISATION]
    named = [p for p in parties if len(p.name) >= 8]
    with_letters = [p for p in parties if any(c in p.name.lower() for c in "æøå")]
    kinds: dict[str, list[str]] = {
        "her-id": [rng.choice(parties).her_id for _ in range(args.queries)],
        "organisation number": [
            rng.choice(orgs).organisation_number or "" for _ in range(args.queries)
        ],
        "prefix (first word, 2-5 letters)": [
            rng.choice(named).name.split()[0][: rng.randint(2, 5)] for _ in range(args.queries)
        ],
        "two-word prefix": [
            " ".join(w[:4] for w in rng.choice(named).name.split()[:2]) for _ in range(args.queries)
        ],
        "typo (one edit)": [typo(rng, rng.choice(named).name) for _ in range(args.queries)],
        "no æøå (Tromso, Bodo, Aalesund)": [
            strip_norwegian(rng.choice(with_letters).name) for _ in range(args.queries)
        ],
    }
    print(f"{'query kind':36} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'found':>6}")
    for kind, queries in kinds.items():
        timings = []
        found = 0
        for query in queries:
            begin = time.perf_counter()
            hits = index.search(query, limit=20)
            timings.append((time.perf_counter() - begin) * 1000)
            found += bool(hits)
        print(
            f"{kind:36} {statistics.median(timings):8.2f} {percentile(timings, 0.99):8.2f} "
            f"{max(timings):8.2f} {found / len(queries):6.0%}"
        )
    if args.store:
        measure_store(parties, index, kinds)


def measure_store(
    parties: list[CommunicationParty], index: PartyIndex, kinds: dict[str, list[str]]
) -> None:
    """Write the parties to SQLite, load them back into an index, compare a few searches."""
    import tempfile
    from pathlib import Path

    from meldingstjener.registry.store import load_index, save_parties
    from meldingstjener.store.database import Database
    from meldingstjener.store.migrate import upgrade
    from meldingstjener.store.payloads import PayloadStore
    from meldingstjener.store.uow import Store

    with tempfile.TemporaryDirectory() as folder:
        database = Database(f"sqlite:///{Path(folder) / 'bench.db'}")
        upgrade(database)
        store = Store(database, PayloadStore(Path(folder) / "payloads"))
        started = time.perf_counter()
        with store.unit_of_work() as uow:
            save_parties(uow, parties, source="benchmark")
            uow.commit()
        written = time.perf_counter() - started
        started = time.perf_counter()
        with store.unit_of_work() as uow:
            loaded = load_index(uow)
        loaded.search("warm up")
        load_seconds = time.perf_counter() - started
        database.dispose()
    same = sum(
        [h.party.her_id for h in loaded.search(q)] == [h.party.her_id for h in index.search(q)]
        for queries in kinds.values()
        for q in queries[:20]
    )
    total = sum(min(20, len(queries)) for queries in kinds.values())
    print(f"store write (SQLite, one transaction): {written:.2f} s")
    print(f"store load + index build: {load_seconds:.2f} s")
    print(f"same hits from the loaded index: {same}/{total} queries")


if __name__ == "__main__":
    main()
