#!/usr/bin/env python3
"""A model of the GC churn benchmark (benches/gc_churn.rs) to compare the engine against: the
same drive (96 zones of 64 objects), filled to 80%, overwritten 3x uniformly or 80/20 hot/cold,
with GC keeping a few free zones by greedy or cost-benefit victim choice. Prints the write
amplification the policies reach in an ideal log (no headers, no padding, no open-zone waste),
what perfect hot/cold separation of user writes (an oracle that knows which keys are hot)
would reach, and a bound: each class in a log of its own, with the zones split between the two
logs in the best way. If the engine's figures are close to the model's, the gap to a target is in the
policy and the fill level, not in the implementation.

    python3 benches/gc_model.py
"""

import random

ZONES, PER_ZONE, FILL, FREE_TARGET, CHURN = 96, 64, 0.8, 3, 3


def simulate(policy, hot_cold, oracle=False, seed=1):
    rnd = random.Random(seed)
    keys = int(ZONES * PER_ZONE * FILL)
    hot_keys = keys // 5
    where = {}
    members = [set() for _ in range(ZONES)]
    written = [0] * ZONES
    last_write = [0] * ZONES
    free = list(range(ZONES))
    sealed = set()
    open_zone = {}
    clock = [0]

    def append(stream, key):
        zone = open_zone.get(stream)
        if zone is None or written[zone] >= PER_ZONE:
            if zone is not None:
                sealed.add(zone)
            zone = free.pop()
            open_zone[stream] = zone
            written[zone] = 0
        if key in where:
            members[where[key]].discard(key)
        where[key] = zone
        members[zone].add(key)
        written[zone] += 1
        clock[0] += 1
        last_write[zone] = clock[0]

    def score(zone):
        u = len(members[zone]) / PER_ZONE
        if policy == "greedy":
            return 1 - u
        return (1 - u) * (clock[0] - last_write[zone] + 1) / (1 + u)

    def collect():
        moved = 0
        while len(free) < FREE_TARGET:
            victim = max(sealed, key=score)
            sealed.remove(victim)
            for key in list(members[victim]):
                append("gc", key)
                moved += 1
            written[victim] = 0
            free.insert(0, victim)
        return moved

    for key in range(keys):
        collect()
        append("user", key)
    user = moved = 0
    for _ in range(keys * CHURN):
        if hot_cold:
            hot = rnd.random() < 0.8
            key = rnd.randrange(hot_keys) if hot else hot_keys + rnd.randrange(keys - hot_keys)
        else:
            key = rnd.randrange(keys)
        moved += collect()
        append("hot" if oracle and key < hot_keys else "user", key)
        user += 1
    return (user + moved) / user


def single_log(zones, keys, seed=1):
    """Write amplification of one log of `zones` zones holding `keys` live objects overwritten
    uniformly (greedy, one zone kept free): one temperature class in a log of its own."""
    rnd = random.Random(seed)
    where, members, written = {}, [set() for _ in range(zones)], [0] * zones
    free, sealed, current = list(range(zones)), set(), [None]

    def append(key):
        zone = current[0]
        if zone is None or written[zone] >= PER_ZONE:
            if zone is not None:
                sealed.add(zone)
            zone = free.pop()
            current[0], written[zone] = zone, 0
        if key in where:
            members[where[key]].discard(key)
        where[key] = zone
        members[zone].add(key)
        written[zone] += 1

    def collect():
        moved = 0
        while len(free) < 1:
            victim = min(sealed, key=lambda z: len(members[z]))
            sealed.remove(victim)
            for key in list(members[victim]):
                append(key)
                moved += 1
            written[victim] = 0
            free.insert(0, victim)
        return moved

    for key in range(keys):
        collect()
        append(key)
    moved = 0
    for _ in range(keys * 6):
        moved += collect()
        append(rnd.randrange(keys))
    return (keys * 6 + moved) / (keys * 6)


def separated_bound():
    """The hot/cold workload with each class in a log of its own and the drive's zones split
    between the two logs in the best way: what perfect knowledge of temperature could reach
    with greedy cleaning within each class."""
    keys = int(ZONES * PER_ZONE * FILL)
    hot, cold = keys // 5, keys - keys // 5
    best = None
    for hot_zones in range(hot // PER_ZONE + 3, ZONES - cold // PER_ZONE - 2):
        wa = 0.8 * single_log(hot_zones, hot) + 0.2 * single_log(ZONES - hot_zones, cold)
        if best is None or wa < best[0]:
            best = (wa, hot_zones)
    return best


if __name__ == "__main__":
    for hot_cold in (False, True):
        for policy in ("greedy", "cost-benefit"):
            line = f"{'hot/cold' if hot_cold else 'uniform':<8} {policy:<12} WA {simulate(policy, hot_cold):.3f}"
            if hot_cold:
                line += f"   with oracle hot/cold separation {simulate(policy, hot_cold, oracle=True):.3f}"
            print(line)
    wa, hot_zones = separated_bound()
    print(f"hot/cold with each class in its own log, zones split at best ({hot_zones} hot, "
          f"{ZONES - hot_zones} cold): WA {wa:.3f}")
