#!/usr/bin/env python3
"""A model of the GC churn benchmark (benches/gc_churn.rs) to compare the engine against: the
same drive (96 zones of 64 objects), filled to 80%, overwritten 3x uniformly or 80/20 hot/cold,
with GC keeping a few free zones by greedy or cost-benefit victim choice. Prints the write
amplification the policies reach in an ideal log (no headers, no padding, no open-zone waste),
what perfect hot/cold separation of user writes (an oracle that knows which keys are hot)
would reach, what guessing temperature from each key's last lifetime (as SepBIT does) reaches,
and a bound: each class in a log of its own, with the zones split between the
two logs in the best way. If the engine's figures are close to the model's, the gap to a target
is in the policy and the fill level, not in the implementation.

    python3 benches/gc_model.py
"""

import random

ZONES, PER_ZONE, FILL, FREE_TARGET, CHURN = 96, 64, 0.8, 3, 3


class Log:
    """A log of `zones` zones of PER_ZONE objects: appends go to one open zone per stream; GC
    moves the live objects of the best-scoring sealed zone to `gc_stream`."""

    def __init__(self, zones, policy, gc_stream="gc"):
        self.policy = policy
        self.gc_stream = gc_stream
        self.where = {}
        self.members = [set() for _ in range(zones)]
        self.written = [0] * zones
        self.last_write = [0] * zones
        self.free = list(range(zones))
        self.sealed = set()
        self.open_zone = {}
        self.clock = 0
        self.moved = 0

    def append(self, stream, key):
        zone = self.open_zone.get(stream)
        if zone is None or self.written[zone] >= PER_ZONE:
            if zone is not None:
                self.sealed.add(zone)
            zone = self.free.pop()
            self.open_zone[stream] = zone
            self.written[zone] = 0
        if key in self.where:
            self.members[self.where[key]].discard(key)
        self.where[key] = zone
        self.members[zone].add(key)
        self.written[zone] += 1
        self.clock += 1
        self.last_write[zone] = self.clock

    def score(self, zone):
        u = len(self.members[zone]) / PER_ZONE
        if self.policy == "greedy":
            return 1 - u
        return (1 - u) * (self.clock - self.last_write[zone] + 1) / (1 + u)

    def collect(self, free_target):
        while len(self.free) < free_target:
            victim = max(self.sealed, key=self.score)
            self.sealed.remove(victim)
            for key in list(self.members[victim]):
                self.append(self.gc_stream, key)
                self.moved += 1
            self.written[victim] = 0
            self.free.insert(0, victim)


def churn(log, keys, free_target, writes, next_key, stream_of=lambda key: "user"):
    """Fills `log` with `keys` objects, then overwrites `writes` of them; returns the write
    amplification of the overwrites."""
    for key in range(keys):
        log.collect(free_target)
        log.append("user", key)
    moved_before = log.moved
    for _ in range(writes):
        key = next_key()
        log.collect(free_target)
        log.append(stream_of(key), key)
    return (writes + log.moved - moved_before) / writes


def simulate(policy, hot_cold, oracle=False, seed=1):
    rnd = random.Random(seed)
    keys = int(ZONES * PER_ZONE * FILL)
    hot_keys = keys // 5

    def next_key():
        if not hot_cold:
            return rnd.randrange(keys)
        if rnd.random() < 0.8:
            return rnd.randrange(hot_keys)
        return hot_keys + rnd.randrange(keys - hot_keys)

    def stream_of(key):
        return "hot" if oracle and key < hot_keys else "user"

    return churn(Log(ZONES, policy), keys, FREE_TARGET, keys * CHURN, next_key, stream_of)


class LifetimeLog(Log):
    """A log that guesses temperature as SepBIT does: a user write whose key's previous version
    lived shorter than the recent average goes to a hot stream, the others to the user stream;
    GC's survivors go to a young or an old GC stream by their age against that average."""

    def __init__(self, zones, policy):
        super().__init__(zones, policy)
        self.written_at = {}
        self.average = None
        self.lifetimes = []

    def write(self, key):
        if key in self.written_at:
            self.lifetimes.append(self.clock - self.written_at[key])
            if len(self.lifetimes) >= 256:
                recent = sum(self.lifetimes) / len(self.lifetimes)
                self.average = recent if self.average is None else (self.average + recent) / 2
                self.lifetimes = []
        lifetime = self.clock - self.written_at.get(key, 0)
        hot = self.average is not None and key in self.written_at and lifetime < self.average
        self.append("hot" if hot else "user", key)
        self.written_at[key] = self.clock

    def collect(self, free_target):
        while len(self.free) < free_target:
            victim = max(self.sealed, key=self.score)
            self.sealed.remove(victim)
            for key in list(self.members[victim]):
                age = self.clock - self.written_at[key]
                young = self.average is not None and age < self.average
                born = self.written_at[key]
                self.append("gc-young" if young else "gc-old", key)
                self.written_at[key] = born
                self.moved += 1
            self.written[victim] = 0
            self.free.insert(0, victim)


def simulate_lifetimes(policy, seed=1):
    """The hot/cold workload in a [`LifetimeLog`]: temperature guessed, not known."""
    rnd = random.Random(seed)
    keys = int(ZONES * PER_ZONE * FILL)
    hot_keys = keys // 5
    log = LifetimeLog(ZONES, policy)
    for key in range(keys):
        log.collect(FREE_TARGET)
        log.write(key)
    moved_before = log.moved
    writes = keys * CHURN
    for _ in range(writes):
        key = rnd.randrange(hot_keys) if rnd.random() < 0.8 else hot_keys + rnd.randrange(keys - hot_keys)
        log.collect(FREE_TARGET)
        log.write(key)
    return (writes + log.moved - moved_before) / writes


def single_log(zones, keys, seed=1):
    """Write amplification of one log of `zones` zones holding `keys` live objects overwritten
    uniformly (greedy, one zone kept free, relocations appended with user writes): one
    temperature class in a log of its own."""
    rnd = random.Random(seed)
    log = Log(zones, "greedy", gc_stream="user")
    return churn(log, keys, 1, keys * 6, lambda: rnd.randrange(keys))


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
                line += f"   with temperature guessed from lifetimes {simulate_lifetimes(policy):.3f}"
            print(line)
    wa, hot_zones = separated_bound()
    print(f"hot/cold with each class in its own log, zones split at best ({hot_zones} hot, "
          f"{ZONES - hot_zones} cold): WA {wa:.3f}")
