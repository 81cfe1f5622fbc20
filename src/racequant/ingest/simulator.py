"""A realistic, Hong-Kong-like race simulator: the embedded default data of racequant.

The generative model (see ``docs/simulator.md``): horses with a latent merit in rating points that
develops with age and has heritable distance, going, surface and running-style preferences; a
handicapper that rates horses from their results and weights them by rating; jockeys and trainers
with persistent skill; draw bias by track and distance; a pace model that splits each run into HK
sectional times; and a betting market that is an informed but noisy estimate of the true chances.

Each runner's performance is ``mu + beta * Gumbel``, so the simulator's own win chance is exactly
``softmax(mu / beta)`` over the starters and the finishing order is a Plackett-Luce draw.
Everything is vectorised with numpy per race day; only the race days (and the races of a day, for
field selection) are looped over in Python.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from racequant.errors import ConfigurationError
from racequant.ingest.schema import HORSE_COLUMNS, RACE_COLUMNS, RUNNER_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["SimulatedResults", "simulate", "write_results"]

# the racequant results format's columns are the canonical ones, less the warehouse's own 'source' label
RACE_FILE_COLUMNS: tuple[str, ...] = tuple(c for c in RACE_COLUMNS if c != "source")
RUNNER_FILE_COLUMNS: tuple[str, ...] = tuple(RUNNER_COLUMNS)
HORSE_FILE_COLUMNS: tuple[str, ...] = tuple(HORSE_COLUMNS)

# ---------------------------------------------------------------------------------------------
# Parameters of the generative model (documented in docs/simulator.md)
# ---------------------------------------------------------------------------------------------
MAX_FIELD = 14
TARGET_HORSES = 1250  # horses in training at any time (Hong Kong keeps about 1,200-1,300)
N_SIRES = 220
N_JOCKEYS = 40
N_TRAINERS = 25
BETA_LBS = 5.0  # scale of the Gumbel race-day luck, in rating points (lbs)
WEIGHT_EFFECT = 0.6  # merit lost per lb carried: the handicapper's 1:1 over-compensates, so ratings carry signal
FORM_SD = 2.5  # day-to-day form, known to nobody, in lbs
SECONDS_PER_LENGTH = 0.17
LBS_PER_LENGTH_MILE = 3.0  # lbs per length over 1,600 m, proportional to distance
MARKET_NOISE_SD = 0.55  # noise of the market's log-odds around the truth
MARKET_BLIND_SPOT = 0.5  # share of distance/going/surface/pace fit the market ignores (beatable baseline)
OVERROUND_MEAN = 1.19
OVERROUND_SD = 0.015
PLACE_OVERROUND = 1.2
WITHDRAWN_RATE = 0.018
DNF_RATE = 0.002
DISQUALIFIED_RATE = 0.0002
DEAD_HEAT_RATE = 0.002

TRACKS = {"ST": "Sha Tin", "HV": "Happy Valley"}
DISTANCES = {  # (track code, surface) -> (distances, probabilities), from HK 2016-2021 frequencies
    ("ST", "turf"): ([1000, 1200, 1400, 1600, 1800, 2000, 2200, 2400], [11, 28, 33, 15, 7, 5, 0.5, 0.8]),
    ("ST", "all_weather"): ([1200, 1650, 1800], [55, 35, 10]),
    ("HV", "turf"): ([1000, 1200, 1650, 1800, 2200], [13, 42, 32, 9.5, 3.5]),
}
# Track speed: par time in seconds on GOOD turf at Sha Tin for a horse rated 60.
PAR_TIME = {
    1000: 57.0,
    1200: 70.0,
    1400: 83.0,
    1600: 96.0,
    1650: 99.8,
    1800: 109.5,
    2000: 122.5,
    2200: 135.5,
    2400: 149.0,
}
# Draw bias in lbs between the innermost and the outermost draw (positive: low draws better).
DRAW_BIAS = {
    ("ST", "turf"): {1000: -2.5, 1200: 2.5, 1400: 2.5, 1600: 3.0, 1800: 3.5, 2000: 2.0, 2200: 1.5, 2400: 1.0},
    ("ST", "all_weather"): {1200: 2.5, 1650: 3.5, 1800: 3.0},
    ("HV", "turf"): {1000: 5.0, 1200: 5.5, 1650: 6.5, 1800: 5.0, 2200: 3.5},
}
TURF_GOINGS = (["GOOD_TO_FIRM", "GOOD", "GOOD_TO_YIELDING", "YIELDING", "SOFT"], [27, 63.5, 6, 2.5, 1])
AWT_GOINGS = (["FAST", "GOOD", "WET_FAST", "WET_SLOW"], [4, 82, 2, 12])
GOING_SOFTNESS = {
    "GOOD_TO_FIRM": -1.0,
    "GOOD": 0.0,
    "GOOD_TO_YIELDING": 1.0,
    "YIELDING": 2.0,
    "SOFT": 3.0,
    "FAST": -1.0,
    "WET_FAST": 0.5,
    "WET_SLOW": 1.5,
}
GOING_RAW = {
    "GOOD_TO_FIRM": "Good To Firm",
    "GOOD": "Good",
    "GOOD_TO_YIELDING": "Good To Yielding",
    "YIELDING": "Yielding",
    "SOFT": "Soft",
    "FAST": "Fast",
    "WET_FAST": "Wet Fast",
    "WET_SLOW": "Wet Slow",
}
COURSE_CONFIGS = (["A", "A+3", "B", "B+2", "C", "C+3"], [25, 10, 20, 10, 20, 15])
# class -> (rating band label, lowest eligible rating, highest eligible rating, prize in HK$)
CLASSES = {
    "5": ("40-0", -1e9, 40.0, 690_000.0),
    "4": ("60-40", 40.0, 60.0, 920_000.0),
    "3": ("80-60", 60.0, 80.0, 1_380_000.0),
    "2": ("100-80", 80.0, 100.0, 1_950_000.0),
    "1": ("120-95", 95.0, 1e9, 2_500_000.0),
}
GROUP_PRIZES = {"G1": 16_000_000.0, "G2": 4_250_000.0, "G3": 3_250_000.0}
SEXES = (["G", "H", "C", "M", "F"], [92, 3.5, 2.5, 1.5, 0.5])
COLOURS = (["Bay", "Brown", "Chestnut", "Grey", "Black"], [50, 25, 18, 5, 2])
COUNTRIES = ["AU", "NZ", "IE", "GB", "US", "FR", "ZA", "JP"]
COUNTRY_P = [48, 24, 10, 9, 4, 2, 2, 1]
GEARS = (["", "B", "TT", "B/TT", "H", "V", "XB", "SR", "CP", "H/TT", "SR/TT"], [45, 14, 11, 8, 5, 5, 4, 3, 2, 2, 1])

_W1 = [
    "Golden",
    "Lucky",
    "Happy",
    "Beauty",
    "Romantic",
    "Dragon",
    "Star",
    "Super",
    "Mighty",
    "Silver",
    "Jade",
    "Fortune",
    "Smart",
    "Brilliant",
    "Royal",
    "Noble",
    "Flying",
    "Thunder",
    "Glorious",
    "Rich",
    "Joyful",
    "Ever",
    "Sky",
    "Winning",
    "Diamond",
    "Eagle",
    "Wonder",
    "Bright",
    "Great",
    "Fairy",
    "Heavenly",
    "Amazing",
    "Victory",
    "Solar",
    "Red",
    "Sunny",
    "Harmony",
    "Talent",
    "Magic",
    "Grand",
    "Swift",
    "Brave",
    "Champion",
    "Merry",
    "Ocean",
    "Courier",
    "Storm",
    "Fantastic",
    "Hero",
    "Wise",
    "Charming",
    "Perfect",
    "Infinity",
    "Dashing",
    "Classic",
    "Imperial",
    "Gorgeous",
    "Power",
    "Hot",
    "Big",
]
_W2 = [
    "Sixty",
    "Generation",
    "Warrior",
    "Express",
    "Legend",
    "Spirit",
    "Master",
    "Dynasty",
    "Joy",
    "Treasure",
    "King",
    "Light",
    "Wind",
    "Phoenix",
    "Tiger",
    "Mission",
    "Delight",
    "Harbour",
    "Empire",
    "Glory",
    "Rocket",
    "Beat",
    "Boss",
    "Chance",
    "Dragon",
    "Force",
    "Gem",
    "Heart",
    "Moon",
    "Pearl",
    "Rainbow",
    "River",
    "Runner",
    "Sailor",
    "Sun",
    "Universe",
    "Wave",
    "Wish",
    "Way",
    "Fighter",
    "Baby",
    "Partner",
    "Pal",
    "Bolt",
    "Flash",
    "Dancer",
    "Eagle",
    "Fortune",
    "Hunter",
    "Prince",
    "Star",
    "Magic",
    "Dream",
    "Vision",
    "Spark",
    "Thunder",
    "Storm",
    "Kid",
    "Rider",
]
_S1 = [
    "Zed",
    "Ocean",
    "Northern",
    "Street",
    "Written",
    "Fast",
    "Pierro",
    "Snitzel",
    "Savabeel",
    "Redoute",
    "Exceed",
    "Not",
    "Star",
    "Shamus",
    "Dundeel",
    "Sebring",
    "Choisir",
    "Fastnet",
    "Encosta",
    "Lonhro",
    "Bel",
    "Darci",
    "Medaglia",
    "Hinchinbrook",
    "Nicconi",
    "Toronado",
    "Deep",
    "Dubawi",
    "Frankel",
    "Galileo",
    "Kodiac",
    "Dark",
    "Invincible",
    "Lope",
    "Siyouni",
    "Sea",
    "Kingman",
    "Iffraaj",
    "Acclamation",
    "Camelot",
]
_S2 = [
    "Park",
    "Rock",
    "Dancer",
    "Tycoon",
    "Sky",
    "Company",
    "Wells",
    "Award",
    "Choice",
    "Reward",
    "Esprit",
    "Brook",
    "Smoke",
    "Angel",
    "Vanda",
    "Rose",
    "Spirit",
    "d'Oro",
    "Impact",
    "Cross",
    "Road",
    "Gold",
    "Fire",
    "Bay",
    "Storm",
    "Crown",
    "Wing",
    "Flyer",
    "Star",
    "Spin",
    "Grey",
    "Runner",
]
_D1 = [
    "Lady",
    "Miss",
    "Queen",
    "Princess",
    "Belle",
    "Dame",
    "Countess",
    "Duchess",
    "Sweet",
    "Pretty",
    "Silk",
    "Lily",
    "Rose",
    "Ruby",
    "Amber",
    "Crystal",
    "Dancing",
    "Gentle",
    "Secret",
    "Little",
    "Blue",
    "Misty",
    "Summer",
    "Winter",
    "Velvet",
    "Lucky",
    "Fair",
]
_D2 = [
    "Choice",
    "Grace",
    "Dream",
    "Charm",
    "Song",
    "Spirit",
    "Melody",
    "Beauty",
    "Magic",
    "Jewel",
    "Heart",
    "Kiss",
    "Wish",
    "Belle",
    "Star",
    "Flower",
    "Dancer",
    "Lass",
    "Girl",
    "Angel",
    "Maid",
    "Sonata",
    "Tiara",
    "Whisper",
    "Promise",
    "Mist",
    "Echo",
    "Bloom",
    "Pearl",
    "Diva",
]


@dataclass
class SimulatedResults:
    """A simulated racing history in the racequant results format, plus the simulator's own truth.

    ``races``, ``runners`` and ``horses`` have exactly the columns of races.csv, runners.csv and
    horses.csv (FORMAT.md). ``truth`` has one row per runner with ``race_id``, ``horse_id``,
    ``true_win_prob`` (0 for withdrawn runners) and the latent components of the performance in lbs;
    it is for tests and documentation, and is not written by :func:`write_results`.
    """

    races: pd.DataFrame
    runners: pd.DataFrame
    horses: pd.DataFrame
    truth: pd.DataFrame


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _p(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def _names(index: np.ndarray, first: list[str], second: list[str], prefixes: list[str]) -> list[str]:
    """Distinct two-word names for distinct indices; a prefix word once the pairs run out."""
    n_pairs = len(first) * len(second)
    stride = 7919 if math.gcd(7919, n_pairs) == 1 else 1
    out = []
    for i in index.tolist():
        cycle, base = divmod(i, n_pairs)
        hashed = (base * stride) % n_pairs
        name = f"{first[hashed // len(second)]} {second[hashed % len(second)]}"
        if cycle:
            extra, word = divmod(cycle - 1, len(prefixes))
            name = f"{prefixes[word]} {name}" + (f" {extra + 1}" if extra else "")
        out.append(name)
    return out


def _round_hk_odds(raw: np.ndarray) -> np.ndarray:
    """Round decimal odds to Hong Kong display steps (0.1 below 10, 0.5 below 20, 1 above), 1.1 to 99."""
    raw = np.clip(raw, 1.1, 99.0)
    out = np.where(raw < 10, np.round(raw, 1), np.where(raw < 20, np.round(raw * 2) / 2, np.round(raw)))
    return np.clip(out, 1.1, 99.0)


def _segment_starts(group: np.ndarray) -> np.ndarray:
    """Start offsets of the runs of equal values in a sorted (contiguous) group array."""
    return np.flatnonzero(np.r_[True, group[1:] != group[:-1]])


def _format_rows(matrix: np.ndarray, fmt: str) -> list[str]:
    row_fmt = " ".join([fmt] * matrix.shape[1])
    return [row_fmt % tuple(row) for row in matrix.tolist()]


def _validate(n_races: object, seed: object, start_date: object, progress: object) -> None:
    if isinstance(n_races, bool) or not isinstance(n_races, int | np.integer) or n_races <= 0:
        raise ConfigurationError(
            f"The 'n_races' parameter of simulate must be a positive int. Got {n_races!r} instead."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigurationError(f"The 'seed' parameter of simulate must be a non-negative int. Got {seed!r} instead.")
    if not isinstance(start_date, date):
        raise ConfigurationError(
            f"The 'start_date' parameter of simulate must be a datetime.date. Got {start_date!r} instead."
        )
    if progress is not None and not callable(progress):
        raise ConfigurationError(
            f"The 'progress' parameter of simulate must be a callable or None. Got {progress!r} instead."
        )


# ---------------------------------------------------------------------------------------------
# The population: sires, dams, horses, jockeys, trainers
# ---------------------------------------------------------------------------------------------
class _Population:
    """Growable numpy arrays of horses and dams, fixed arrays of sires, jockeys and trainers."""

    def __init__(self, rng: np.random.Generator, day0: int) -> None:
        self.rng = rng
        # Sires: ability and preferences, passed on to their progeny; popularity is Zipf-like.
        self.sire_ability = rng.normal(0.0, 12.0, N_SIRES)
        self.sire_growth = rng.uniform(0.5, 1.5, N_SIRES)  # how much (and how late) progeny improve
        self.sire_dist = rng.normal(np.log(1450.0), 0.16, N_SIRES)
        self.sire_going = rng.normal(0.0, 1.0, N_SIRES)
        self.sire_awt = rng.normal(0.0, 1.0, N_SIRES)
        self.sire_early = rng.normal(0.0, 1.0, N_SIRES)
        self.sire_country = rng.choice(len(COUNTRIES), N_SIRES, p=_p(COUNTRY_P))
        popularity = 1.0 / np.arange(1, N_SIRES + 1) ** 0.7
        self.sire_p = rng.permutation(popularity / popularity.sum())
        self.n_dams = 0
        self.dam_cols = {k: np.empty(1024) for k in ("ability", "dist", "going", "awt", "early")}
        self.dam_damsire = np.empty(1024, dtype=np.int64)
        # Jockeys and trainers: persistent skill in lbs; better jockeys get more (and better) rides.
        self.jockey_skill = rng.normal(0.0, 1.6, N_JOCKEYS)
        self.jockey_id = np.arange(N_JOCKEYS)
        self.n_jockey_ids = N_JOCKEYS
        self.trainer_skill = rng.normal(0.0, 1.5, N_TRAINERS)
        self.trainer_id = np.arange(N_TRAINERS)
        self.n_trainer_ids = N_TRAINERS
        self.n = 0
        cap = 4096
        self.f: dict[str, np.ndarray] = {}
        for k in ("base", "growth", "dist", "dist_known", "going", "awt", "early", "rating", "bodyweight"):
            self.f[k] = np.empty(cap)
        for k in (
            "sire",
            "dam",
            "trainer",
            "foal_day",
            "foaled_year",
            "next_ready",
            "last_run",
            "sex",
            "colour",
            "country",
            "gear",
            "runs",
        ):
            self.f[k] = np.empty(cap, dtype=np.int64)
        self.f["active"] = np.zeros(cap, dtype=bool)
        self.add_horses(TARGET_HORSES, day0, initial=True)

    def _new_dams(self, n: int) -> np.ndarray:
        rng = self.rng
        while self.n_dams + n > len(self.dam_damsire):
            for k, v in self.dam_cols.items():
                self.dam_cols[k] = np.concatenate([v, np.empty_like(v)])
            self.dam_damsire = np.concatenate([self.dam_damsire, np.empty_like(self.dam_damsire)])
        idx = np.arange(self.n_dams, self.n_dams + n)
        damsire = rng.choice(N_SIRES, n, p=self.sire_p)
        c = self.dam_cols
        c["ability"][idx] = 0.4 * self.sire_ability[damsire] + rng.normal(0.0, 7.0, n)
        c["dist"][idx] = np.log(1450.0) + 0.4 * (self.sire_dist[damsire] - np.log(1450.0)) + rng.normal(0, 0.15, n)
        c["going"][idx] = 0.4 * self.sire_going[damsire] + rng.normal(0.0, 0.9, n)
        c["awt"][idx] = 0.4 * self.sire_awt[damsire] + rng.normal(0.0, 0.9, n)
        c["early"][idx] = 0.4 * self.sire_early[damsire] + rng.normal(0.0, 0.9, n)
        self.dam_damsire[idx] = damsire
        self.n_dams += n
        return idx

    def add_horses(self, n: int, day: int, *, initial: bool = False) -> None:
        """Foal (well, import) ``n`` new horses: age 3-4 normally, 3-8 for the starting population."""
        if n <= 0:
            return
        rng = self.rng
        while self.n + n > len(self.f["active"]):
            for k, v in self.f.items():
                grown = np.zeros(len(v) * 2, dtype=v.dtype)
                grown[: len(v)] = v
                self.f[k] = grown
        idx = np.arange(self.n, self.n + n)
        f = self.f
        sire = rng.choice(N_SIRES, n, p=self.sire_p)
        # A third of new horses are siblings of earlier horses (an existing dam); the rest have a new dam.
        dam = self._new_dams(n)
        if self.n_dams > n:
            sibling = rng.random(n) < 0.33
            dam[sibling] = rng.integers(0, self.n_dams - n, sibling.sum())
        dc = self.dam_cols
        # Heritable traits: half the sire's and half the dam's deviation, plus the foal's own draw.
        f["base"][idx] = 63.0 + 0.5 * self.sire_ability[sire] + 0.5 * dc["ability"][dam] + rng.normal(0, 10.0, n)
        f["dist"][idx] = (
            np.log(1450.0)
            + 0.5 * (self.sire_dist[sire] - np.log(1450.0))
            + 0.5 * (dc["dist"][dam] - np.log(1450.0))
            + rng.normal(0.0, 0.11, n)
        )
        f["dist_known"][idx] = f["dist"][idx] + rng.normal(0.0, 0.07, n)
        f["going"][idx] = 0.5 * self.sire_going[sire] + 0.5 * dc["going"][dam] + rng.normal(0.0, 0.7, n)
        f["awt"][idx] = 0.5 * self.sire_awt[sire] + 0.5 * dc["awt"][dam] + rng.normal(0.0, 0.7, n)
        f["early"][idx] = 0.5 * self.sire_early[sire] + 0.5 * dc["early"][dam] + rng.normal(0.0, 0.7, n)
        f["growth"][idx] = np.clip(self.sire_growth[sire] + rng.normal(0.0, 0.2, n), 0.2, 2.0)
        f["bodyweight"][idx] = np.clip(rng.normal(1090.0, 55.0, n), 960.0, 1230.0)
        f["sire"][idx] = sire
        f["dam"][idx] = dam
        f["trainer"][idx] = rng.integers(0, N_TRAINERS, n)
        age = rng.integers(3, 9, n) if initial else np.where(rng.random(n) < 0.7, 3, 4)
        country = np.where(rng.random(n) < 0.8, self.sire_country[sire], rng.choice(len(COUNTRIES), n, p=_p(COUNTRY_P)))
        southern = np.isin(country, [0, 1, 6])  # AU, NZ, ZA foal in the southern spring
        foal_offset = np.where(southern, 270, 90) + rng.integers(-30, 31, n)  # days into the foaling year
        years_back = age + (rng.random(n) < 0.5)
        day_date = date(1970, 1, 1) + timedelta(days=int(day))
        foaled_year = day_date.year - years_back
        jan1 = (np.asarray(foaled_year) - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
        foal_day = np.minimum(jan1 + foal_offset, day - 365 * 3)
        f["foal_day"][idx] = foal_day
        f["foaled_year"][idx] = foaled_year
        f["country"][idx] = country
        f["sex"][idx] = rng.choice(len(SEXES[0]), n, p=_p(SEXES[1]))
        f["colour"][idx] = rng.choice(len(COLOURS[0]), n, p=_p(COLOURS[1]))
        f["gear"][idx] = rng.choice(len(GEARS[0]), n, p=_p(GEARS[1]))
        f["runs"][idx] = 0
        f["last_run"][idx] = -1
        merit_now = f["base"][idx] + f["growth"][idx] * _age_development((day - foal_day) / 365.25)
        if initial:
            f["rating"][idx] = np.clip(np.round(merit_now + rng.normal(0.0, 5.0, n)), 5, 130)
            f["next_ready"][idx] = day + rng.integers(0, 35, n)
        else:
            # HK griffins start at 52; imported horses with form are rated on it, roughly.
            griffin = (age == 3) & southern
            rated = np.clip(np.round(merit_now + rng.normal(0.0, 8.0, n)), 40, 95)
            f["rating"][idx] = np.where(griffin, 52.0, rated)
            f["next_ready"][idx] = day + rng.integers(20, 120, n)
        f["active"][idx] = True
        self.n += n


def _age_development(age: np.ndarray) -> np.ndarray:
    """Merit relative to the peak, in lbs per unit of growth: improving to 5, declining after 6.5."""
    return np.where(age < 5.0, -5.0 * (5.0 - age), np.where(age > 6.5, -2.5 * (age - 6.5), 0.0))


# ---------------------------------------------------------------------------------------------
# Race days
# ---------------------------------------------------------------------------------------------
def _meeting_dates(start: date, rng: np.random.Generator) -> object:
    """Yield (date, track code): Wednesday nights at Happy Valley, weekends at Sha Tin, no racing in summer."""
    day = start
    while True:
        summer = (day.month == 7 and day.day > 15) or day.month == 8
        wd = day.weekday()
        if not summer and wd in (2, 5, 6):
            if wd == 2:
                track = "HV" if rng.random() < 0.92 else "ST"
                yield day, track
            elif (wd == 6 and rng.random() < 0.75) or (wd == 5 and rng.random() < 0.25):
                yield day, ("ST" if rng.random() < 0.9 else "HV")
        day += timedelta(days=1)


def simulate(
    n_races: int,
    seed: int = 0,
    *,
    start_date: date = date(2015, 9, 1),
    progress: Callable[[int, int], None] | None = None,
) -> SimulatedResults:
    """Simulate ``n_races`` Hong-Kong-like races from ``start_date``; the same seed gives the same frames.

    ``progress(done_races, total_races)`` is called after every race day.
    """
    _validate(n_races, seed, start_date, progress)
    n_races = int(n_races)
    rng = np.random.default_rng(int(seed))
    epoch = date(1970, 1, 1)
    pop = _Population(rng, (start_date - epoch).days)
    logger.info("Simulating %d races from %s with seed %d", n_races, start_date, seed)

    race_rows: dict[str, list] = {
        k: []
        for k in (
            "date",
            "track",
            "race_no",
            "off_time",
            "distance_m",
            "surface",
            "going",
            "race_class",
            "course_config",
            "prize",
            "day_of_race",
        )
    }
    runner_chunks: list[dict[str, np.ndarray]] = []
    jockey_p = np.exp(0.6 * pop.jockey_skill)
    done = 0
    race_counter = 0
    meetings = _meeting_dates(start_date, rng)
    while done < n_races:
        day_date, track = next(meetings)  # type: ignore[call-overload]
        day = (day_date - epoch).days
        n_today = int(rng.choice([8, 9], p=[0.6, 0.4]) if track == "HV" else rng.choice([10, 11], p=[0.75, 0.25]))
        n_today = min(n_today, n_races - done)
        chunk = _race_day(pop, rng, day, day_date, track, n_today, race_counter, race_rows, jockey_p)
        if chunk is not None:
            runner_chunks.append(chunk)
        race_counter += n_today
        done += n_today
        _retire_and_replace(pop, rng, day)
        # Jockeys and trainers come and go, slowly; ids stay unique.
        if rng.random() < 0.012:
            j = rng.integers(N_JOCKEYS)
            pop.jockey_skill[j] = rng.normal(-0.5, 1.4)
            pop.jockey_id[j] = pop.n_jockey_ids
            pop.n_jockey_ids += 1
            jockey_p = np.exp(0.6 * pop.jockey_skill)
        if rng.random() < 0.006:
            t = rng.integers(N_TRAINERS)
            pop.trainer_skill[t] = rng.normal(0.0, 1.5)
            pop.trainer_id[t] = pop.n_trainer_ids
            pop.n_trainer_ids += 1
        if progress is not None:
            progress(done, n_races)
    return _assemble(pop, rng, race_rows, runner_chunks)


def _race_day(
    pop: _Population,
    rng: np.random.Generator,
    day: int,
    day_date: date,
    track: str,
    n_today: int,
    race_counter: int,
    race_rows: dict[str, list],
    jockey_p: np.ndarray,
) -> dict[str, np.ndarray] | None:
    f = pop.f
    n_h = pop.n
    active = np.flatnonzero(f["active"][:n_h])
    # Trainers bring horses forward a little when too few are ready: keep 1.6 runners declared per place.
    need = min(len(active), int(1.6 * MAX_FIELD * n_today))
    threshold = max(day, int(np.partition(f["next_ready"][active], need - 1)[need - 1]))
    ready = active[f["next_ready"][active] <= threshold]
    ratings = f["rating"][ready]
    logger.debug("Race day %s at %s: %d horses ready", day_date, track, len(ready))
    taken = np.zeros(len(ready), dtype=bool)
    turf_going = str(rng.choice(TURF_GOINGS[0], p=_p(TURF_GOINGS[1])))
    awt_going = str(rng.choice(AWT_GOINGS[0], p=_p(AWT_GOINGS[1])))
    config = str(rng.choice(COURSE_CONFIGS[0], p=_p(COURSE_CONFIGS[1])))
    first_off = (19 * 60 + 15) if track == "HV" else (12 * 60 + 45 + 15 * int(rng.integers(0, 2)))
    eligible_by_class = {c: (ratings >= lo) & (ratings <= hi) for c, (_, lo, hi, _) in CLASSES.items()}
    class_names = list(CLASSES)
    waiting = (day - f["next_ready"][ready]) / 14.0

    fields: list[np.ndarray] = []
    for r in range(n_today):
        surface = "all_weather" if track == "ST" and rng.random() < 0.12 else "turf"
        dists, dp = DISTANCES[(track, surface)]
        distance = int(rng.choice(dists, p=_p(dp)))
        free = ~taken
        counts = np.array([(eligible_by_class[c] & free).sum() for c in class_names], dtype=float)
        weights = np.where(counts >= 8, counts, 0.0)
        if weights.sum() == 0:
            weights = counts + 1e-9
        race_class = class_names[int(rng.choice(len(class_names), p=weights / weights.sum()))]
        if track == "ST" and surface == "turf" and rng.random() < 0.06 and ((ratings >= 80) & free).sum() >= 8:
            race_class = str(rng.choice(["G1", "G2", "G3"], p=[0.38, 0.22, 0.40]))
            lo, hi = 80.0, 1e9
        else:
            lo, hi = CLASSES[race_class][1], CLASSES[race_class][2]
        # Horses rated outside the band are allowed in (nearest first) when the band alone cannot fill a field.
        outside = np.where(free, np.maximum(lo - ratings, 0.0) + np.maximum(ratings - hi, 0.0), np.inf)
        need = min(8, int(free.sum()))
        limit = np.partition(outside, need - 1)[need - 1] if need > 0 else 0.0
        elig = free & (outside <= max(limit, 0.0))
        if track == "HV":
            size = int(rng.choice([12, 11, 10, 9, 8], p=[0.76, 0.09, 0.07, 0.05, 0.03]))
        else:
            size = int(rng.choice([14, 13, 12, 11, 10, 9], p=[0.62, 0.12, 0.14, 0.05, 0.04, 0.03]))
        cand = np.flatnonzero(elig)
        if len(cand) == 0:
            fields.append(np.empty(0, dtype=np.int64))
        else:
            # Trainers enter horses at distances (and surfaces) they believe suit them, and horses that waited.
            h = ready[cand]
            fit = -(((np.log(distance) - f["dist_known"][h]) / 0.12) ** 2)
            if surface == "all_weather":
                fit = fit + 1.5 * f["awt"][h] - 1.0
            score = fit + waiting[cand] + rng.gumbel(size=len(cand))
            pick = cand[np.argsort(-score, kind="stable")[:size]]
            taken[pick] = True
            fields.append(ready[pick])
        race_rows["date"].append(day_date)
        race_rows["track"].append(track)
        race_rows["race_no"].append(r + 1)
        off = first_off + 30 * r + 5 * (r // 3)
        race_rows["off_time"].append(f"{off // 60:02d}:{off % 60:02d}")
        race_rows["distance_m"].append(distance)
        race_rows["surface"].append(surface)
        race_rows["going"].append(turf_going if surface == "turf" else awt_going)
        race_rows["race_class"].append(race_class)
        race_rows["course_config"].append(config if surface == "turf" else "")
        prize = GROUP_PRIZES[race_class] if race_class.startswith("G") else CLASSES[race_class][3]
        if race_class == "G1":
            prize *= float(rng.choice([0.75, 1.0, 1.25, 1.6]))
        race_rows["prize"].append(prize)
        race_rows["day_of_race"].append(day)

    sizes = np.array([len(x) for x in fields])
    if sizes.sum() == 0:
        return None
    R = n_today
    race_local = np.repeat(np.arange(R), sizes)
    slot = np.concatenate([np.arange(s) for s in sizes])
    horse = np.concatenate(fields)
    n = len(horse)
    races_i = race_counter + race_local
    dist = np.array(race_rows["distance_m"][-R:], dtype=float)[race_local]
    surface_awt = (np.array(race_rows["surface"][-R:]) == "all_weather")[race_local]
    goings = race_rows["going"][-R:]
    softness = np.array([GOING_SOFTNESS[g] for g in goings])[race_local]
    classes = race_rows["race_class"][-R:]
    group_race = np.array([c.startswith("G") for c in classes])[race_local]
    bias = np.array(
        [DRAW_BIAS[(track, race_rows["surface"][-R + i])][race_rows["distance_m"][-R + i]] for i in range(R)]
    )[race_local]
    if config == "C+3":
        bias = bias * 1.15

    def pad(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((R, MAX_FIELD), fill, dtype=float)
        out[race_local, slot] = values
        return out

    # Declarations: ratings, weights (top-rated carries 133 lbs in a handicap), draws, withdrawals.
    rating = f["rating"][horse].copy()
    max_rating = pad(rating, -np.inf).max(axis=1)[race_local]
    is_mare = np.isin(f["sex"][horse], [3, 4])
    handicap_w = np.clip(133.0 - (max_rating - rating), 113.0, 133.0)
    weight = np.where(group_race, 126.0 - 4.0 * is_mare, handicap_w)
    withdrawn = rng.random(n) < WITHDRAWN_RATE
    starters_per_race = np.bincount(race_local, weights=~withdrawn, minlength=R)
    withdrawn &= starters_per_race[race_local] >= 5
    starter = ~withdrawn
    size_r = sizes[race_local]
    draw_key = pad(rng.random(n), np.inf)
    draw = (np.argsort(np.argsort(draw_key, axis=1), axis=1) + 1)[race_local, slot]
    # Saddle cloth numbers go by weight, top weight first.
    saddle_key = pad(-weight * 1000 - rating + rng.random(n), np.inf)
    saddle = (np.argsort(np.argsort(saddle_key, axis=1), axis=1) + 1)[race_local, slot]

    # Jockeys: each race books distinct jockeys (weighted by popularity); the best go to the best horses.
    key = np.log(jockey_p)[None, :] + rng.gumbel(size=(R, N_JOCKEYS))
    booked = np.argsort(-key, axis=1)[:, :MAX_FIELD]
    booked_key = pop.jockey_skill[booked] + rng.normal(0.0, 1.0, booked.shape)
    booked = np.take_along_axis(booked, np.argsort(-booked_key, axis=1), axis=1)
    quality_rank = np.argsort(np.argsort(pad(-(rating + rng.normal(0.0, 8.0, n)), np.inf), axis=1), axis=1)
    jockey = booked[race_local, quality_rank[race_local, slot]]

    # Performance components, in lbs (rating points).
    age_years = (day - f["foal_day"][horse]) / 365.25
    ability = f["base"][horse] + f["growth"][horse] * _age_development(age_years)
    jockey_eff = pop.jockey_skill[jockey]
    trainer_eff = pop.trainer_skill[f["trainer"][horse]]
    weight_eff = -WEIGHT_EFFECT * (weight - 123.0)
    mismatch = np.log(dist) - f["dist"][horse]
    distance_eff = -12.0 * (1.0 - np.exp(-((mismatch / 0.16) ** 2)))
    going_eff = 1.6 * f["going"][horse] * softness
    surface_eff = np.where(surface_awt, 3.5 * f["awt"][horse] - 1.0, 0.0)
    n_starters = np.maximum(np.bincount(race_local, weights=starter, minlength=R), 2)[race_local]
    draw_rel = (draw - 1) / np.maximum(size_r - 1, 1)
    draw_eff = -bias * draw_rel
    early = f["early"][horse]
    pressure = np.sort(pad(np.where(starter, early, -np.inf), -np.inf), axis=1)[:, -3:].mean(axis=1)
    pressure = np.where(np.isfinite(pressure), pressure, 0.0)[race_local]
    pace_eff = -1.5 * (pressure - 1.0) * early  # a hot pace finds out the leaders and suits the closers
    last_run = f["last_run"][horse]
    layoff = np.where(last_run < 0, 0.0, np.where(day - last_run > 100, -2.0, 0.0))
    form_eff = rng.normal(0.0, FORM_SD, n)
    mu = (
        ability
        + jockey_eff
        + trainer_eff
        + weight_eff
        + distance_eff
        + going_eff
        + surface_eff
        + draw_eff
        + pace_eff
        + layoff
        + form_eff
    )
    perf = mu + BETA_LBS * rng.gumbel(size=n)
    # True chances: softmax of mu / beta over the starters of each race.
    z = pad(np.where(starter, mu / BETA_LBS, -np.inf), -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = z - z.max(axis=1, keepdims=True)
        ez = np.where(np.isfinite(z), np.exp(z), 0.0)
        true_p = (ez / np.maximum(ez.sum(axis=1, keepdims=True), 1e-300))[race_local, slot]
    perf_pad = pad(np.where(starter, perf, -np.inf), -np.inf)
    order = np.argsort(-perf_pad, axis=1)
    place = np.argsort(order, axis=1)[race_local, slot] + 1  # 1 = winner, among starters (withdrawn last)
    best_perf = perf_pad.max(axis=1)[race_local]
    second_perf = np.sort(perf_pad, axis=1)[:, -2][race_local]
    lengths_per_lb = 1.0 / (LBS_PER_LENGTH_MILE * dist / 1600.0)
    beaten = (best_perf - perf) * lengths_per_lb
    win_margin = (best_perf - second_perf) * lengths_per_lb

    # The handicapper: winners up 5-10, close placings up a little, well-beaten horses down slowly.
    delta = np.where(
        place == 1,
        np.clip(np.round(5.0 + 1.5 * win_margin), 5, 10),
        np.where(place <= 3, np.clip(np.round(3.0 - beaten), 0, 3), -np.clip(np.floor((beaten - 2.0) / 4.0), 0, 3)),
    )
    delta = np.where(group_race, np.clip(delta, -2, 3), delta)
    started = horse[starter]
    f["rating"][started] = np.clip(rating[starter] + delta[starter], 0.0, 140.0)
    f["runs"][started] += 1
    f["last_run"][started] = day
    gap = rng.integers(14, 43, len(started)) + np.where(rng.random(len(started)) < 0.08, rng.integers(60, 180), 0)
    f["next_ready"][started] = day + gap
    f["next_ready"][horse[withdrawn]] = day + rng.integers(7, 28, int(withdrawn.sum()))
    bodyweight = np.round(f["bodyweight"][horse] + 3.0 * (age_years - 4.0) + rng.normal(0.0, 7.0, n))
    market_adjust = MARKET_BLIND_SPOT * (distance_eff + going_eff + surface_eff + pace_eff)

    return {
        "race": races_i,
        "slot": slot,
        "horse": horse,
        "draw": draw,
        "saddle": saddle,
        "jockey": pop.jockey_id[jockey],
        "trainer": pop.trainer_id[f["trainer"][horse]],
        "age": np.floor(age_years).astype(np.int64),
        "sex": f["sex"][horse],
        "weight": weight,
        "bodyweight": np.clip(bodyweight, 930.0, 1280.0),
        "rating": rating,
        "gear": f["gear"][horse],
        "withdrawn": withdrawn,
        "perf": perf,
        "true_p": true_p,
        "mu": mu,
        "ability": ability,
        "jockey_eff": jockey_eff,
        "trainer_eff": trainer_eff,
        "weight_eff": weight_eff,
        "distance_eff": distance_eff,
        "going_eff": going_eff,
        "surface_eff": surface_eff,
        "draw_eff": draw_eff,
        "pace_eff": pace_eff,
        "fitness_eff": layoff,
        "form_eff": form_eff,
        "early": early,
        "market_adjust": market_adjust,
        "n_starters": n_starters,
        "draw_rel": draw_rel,
    }


def _retire_and_replace(pop: _Population, rng: np.random.Generator, day: int) -> None:
    f = pop.f
    n = pop.n
    ran_today = np.flatnonzero(f["active"][:n] & (f["last_run"][:n] == day))
    if len(ran_today):
        age = (day - f["foal_day"][ran_today]) / 365.25
        rating = f["rating"][ran_today]
        p = 0.012 + 0.03 * (age >= 8) + 0.25 * (age >= 10) + 0.08 * (rating < 15) + 0.4 * (rating < 5)
        retire = ran_today[rng.random(len(ran_today)) < p]
        f["active"][retire] = False
    n_active = int(f["active"][:n].sum())
    pop.add_horses(TARGET_HORSES - n_active, day)


# ---------------------------------------------------------------------------------------------
# After the loop: results, sectionals, market, frames
# ---------------------------------------------------------------------------------------------
def _section_lengths(distance: int) -> list[int]:
    """HK sections: 400 m from the finish backwards; the first section takes what remains."""
    first = distance % 400 or 400
    if first < 200:  # 1,650 m: 450 400 400 400
        first += 400
    return [first] + [400] * ((distance - first) // 400)


def _assemble(
    pop: _Population,
    rng: np.random.Generator,
    race_rows: dict[str, list],
    chunks: list[dict[str, np.ndarray]],
) -> SimulatedResults:
    col = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    n = len(col["race"])
    race = col["race"]
    n_races = len(race_rows["date"])
    dist_r = np.array(race_rows["distance_m"], dtype=np.int64)
    track_r = np.array(race_rows["track"])
    surface_r = np.array(race_rows["surface"])
    going_r = np.array(race_rows["going"])
    dist = dist_r[race].astype(float)
    starter = ~col["withdrawn"]
    perf = col["perf"]

    # Non-finishers and disqualifications among the beaten horses; positions among the finishers.
    best = np.full(n_races, -np.inf)
    np.maximum.at(best, race, np.where(starter, perf, -np.inf))
    is_winner = starter & (perf == best[race])
    dnf = starter & ~is_winner & (rng.random(n) < DNF_RATE / 0.92)
    dq = starter & ~is_winner & ~dnf & (rng.random(n) < DISQUALIFIED_RATE / 0.92)
    finished = starter & ~dnf & ~dq
    timed = finished | dq

    # Times: par for the track, distance, surface and going, then the horse's performance.
    par_by_dist = np.vectorize(PAR_TIME.get, otypes=[float])(dist_r)
    par = par_by_dist * (1.0 + 0.006 * np.vectorize(GOING_SOFTNESS.get, otypes=[float])(going_r))
    par = par + np.where(track_r == "HV", 0.9 * dist_r / 1000.0, 0.0) + np.where(surface_r == "all_weather", 0.4, 0.0)
    par = par + rng.normal(0.0, 0.35, n_races) * dist_r / 1200.0  # the day's wind and track variance
    sec_per_lb = SECONDS_PER_LENGTH / (LBS_PER_LENGTH_MILE * dist / 1600.0)
    # Beaten horses that lose interest drop further back (order among the also-rans only).
    tail = np.where(is_winner, 0.0, rng.exponential(1.2, n) * (rng.random(n) < 0.5))
    time = par[race] - (perf - tail - 60.0) * sec_per_lb
    time = np.round(time, 2)
    # Finishing order: by time, ties broken by performance; dead heats occasionally.
    order = np.lexsort((-perf, time, ~finished, race))
    race_sorted = race[order]
    starts = _segment_starts(race_sorted)
    seg_start = np.zeros(n_races, dtype=np.int64)
    seg_start[race_sorted[starts]] = starts
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - seg_start[race_sorted] + 1
    position = np.where(finished, rank, 0)
    winner_time = np.full(n_races, np.inf)
    np.minimum.at(winner_time, race, np.where(finished, time, np.inf))
    heat = rng.random(n_races) < DEAD_HEAT_RATE
    n_fin = np.bincount(race, weights=finished, minlength=n_races)
    heat_pos = (np.floor(rng.random(n_races) * np.maximum(n_fin - 1, 1)) + 1).astype(np.int64)
    heat_pos = np.where(rng.random(n_races) < 0.5, 1, heat_pos)  # half of the dead heats are for the win
    in_heat = finished & heat[race] & (n_fin[race] >= 2)
    first_of = in_heat & (position == heat_pos[race])
    second_of = in_heat & (position == heat_pos[race] + 1)
    heat_time = np.full(n_races, np.nan)
    heat_time[race[first_of]] = time[first_of]
    has_pair = np.zeros(n_races, dtype=bool)
    has_pair[race[second_of]] = True
    has_pair &= ~np.isnan(heat_time)
    moved = second_of & has_pair[race]
    time[moved] = heat_time[race[moved]]
    position[moved] -= 1
    winner_time = np.full(n_races, np.inf)
    np.minimum.at(winner_time, race, np.where(finished, time, np.inf))
    gap_lengths = np.maximum(time - winner_time[race], 0.0) / SECONDS_PER_LENGTH
    margin = np.where(
        gap_lengths <= 0.0,
        0.0,
        np.where(
            gap_lengths < 0.075,
            0.05,
            np.where(
                gap_lengths < 0.15,
                0.1,
                np.where(
                    gap_lengths < 0.3,
                    0.2,
                    np.where(gap_lengths < 10, np.round(gap_lengths * 4) / 4, np.round(gap_lengths * 2) / 2),
                ),
            ),
        ),
    )

    # Sectionals: a par profile per distance, shifted early or late by the horse's running style.
    section_strings = np.full(n, "", dtype=object)
    position_strings = np.full(n, "", dtype=object)
    sections_r = [_section_lengths(int(d)) for d in dist_r]
    k_r = np.array([len(s) for s in sections_r])
    draw_rel = col["draw_rel"]
    style = col["early"] + rng.normal(0.0, 0.5, n) - 0.6 * draw_rel
    for k in np.unique(k_r):
        sel = np.flatnonzero(timed & (k_r[race] == k))
        if len(sel) == 0:
            continue
        lengths = np.array([sections_r[r] for r in race[sel]], dtype=float)  # [m, k]
        first_factor = 1.05 + 0.04 * 200.0 / lengths[:, :1]
        shape = np.ones_like(lengths)
        shape[:, :1] = first_factor
        shape[:, -1] = 0.985
        if k > 3:
            shape[:, 1:-1] = 1.0 + 0.015 * np.linspace(0.0, 1.0, k - 2)[None, :]
        base = lengths * shape
        base = base / base.sum(axis=1, keepdims=True)
        w = np.linspace(-1.0, 1.0, k)[None, :]
        w = w - (base * w).sum(axis=1, keepdims=True)  # zero-mean under the par profile: the total is kept
        cnt = np.bincount(race[sel], minlength=n_races)
        race_style = np.bincount(race[sel], weights=style[sel], minlength=n_races) / np.maximum(cnt, 1)
        rel = (style[sel] - race_style[race[sel]])[:, None]
        t_total = time[sel][:, None]
        sec = t_total * base * (1.0 - 0.018 * rel * w * 1.0 / np.abs(w).max(axis=1, keepdims=True))
        sec = np.round(sec, 2)
        sec[:, -1] = np.round(time[sel] - sec[:, :-1].sum(axis=1), 2)
        section_strings[sel] = _format_rows(sec, "%.2f")
        # Running positions: rank of the cumulative time at each section end, within the race.
        cum = np.cumsum(sec, axis=1)
        rp = np.empty((len(sel), k), dtype=np.int64)
        r_sel = race[sel]
        for j in range(k):
            tie = position[sel] if j == k - 1 else -col["perf"][sel]
            o = np.lexsort((tie, cum[:, j], r_sel))
            rs = r_sel[o]
            st = _segment_starts(rs)
            first_idx = np.zeros(n_races, dtype=np.int64)
            first_idx[rs[st]] = st
            rp[o, j] = np.arange(len(sel)) - first_idx[rs] + 1
        fin_sel = finished[sel]
        rp[fin_sel, -1] = position[sel][fin_sel]
        position_strings[sel] = _format_rows(rp, "%d")

    # The market: informed but noisy log-odds around the truth, with a blind spot and an overround.
    true_p = col["true_p"]
    logit = np.where(starter, np.log(np.maximum(true_p, 1e-12)) - col["market_adjust"] / BETA_LBS, -np.inf)
    logit = logit + rng.normal(0.0, MARKET_NOISE_SD, n)
    mx = np.full(n_races, -np.inf)
    np.maximum.at(mx, race, logit)
    e = np.where(starter, np.exp(logit - mx[race]), 0.0)
    q = e / np.bincount(race, weights=e, minlength=n_races)[race]
    overround = rng.normal(OVERROUND_MEAN, OVERROUND_SD, n_races)
    win_odds = np.where(starter, _round_hk_odds(1.0 / np.maximum(q * overround[race], 1e-9)), np.nan)
    place_odds = _place_odds(q, race, col["slot"], starter, n_races, rng)

    # Frames in the racequant format.
    dates = pd.to_datetime(pd.Series(race_rows["date"])).to_numpy().astype("datetime64[s]")
    date_str = np.datetime_as_string(dates, unit="D")
    race_ids = np.array(
        [
            f"SIM-{d.replace('-', '')}-{t}-{no:02d}"
            for d, t, no in zip(date_str, track_r, race_rows["race_no"], strict=True)
        ],
        dtype=object,
    )
    classes = np.array(race_rows["race_class"], dtype=object)
    bands = np.array([CLASSES[c][0] if c in CLASSES else "" for c in classes], dtype=object)
    races = pd.DataFrame(
        {
            "race_id": race_ids,
            "date": dates,
            "track": [TRACKS[t] for t in track_r],
            "country": "HK",
            "race_no": race_rows["race_no"],
            "off_time": race_rows["off_time"],
            "distance_m": dist_r,
            "surface": surface_r,
            "going": going_r,
            "going_raw": [GOING_RAW[g] for g in going_r],
            "race_class": classes,
            "rating_band": bands,
            "prize": race_rows["prize"],
            "course_config": race_rows["course_config"],
            "section_distances_m": [" ".join(map(str, s)) for s in sections_r],
        }
    )
    races = _typed(races, {"race_no": "Int64", "distance_m": "Int64", "prize": "Float64"}, ["date"])
    races = races.astype({"date": "datetime64[s]"})

    horse = col["horse"]
    hid_num = np.arange(pop.n)
    horse_ids = np.array([f"SIM-H{i:06d}" for i in hid_num], dtype=object)
    horse_names = np.array(_names(hid_num, _W1, _W2, _W1), dtype=object)
    jockey_ids = np.array([f"SIM-J{i:04d}" for i in range(pop.n_jockey_ids)], dtype=object)
    trainer_ids = np.array([f"SIM-T{i:04d}" for i in range(pop.n_trainer_ids)], dtype=object)
    sex_codes = np.array(SEXES[0], dtype=object)
    gear_codes = np.array(GEARS[0], dtype=object)
    status = np.where(
        col["withdrawn"], "withdrawn", np.where(dnf, "did_not_finish", np.where(dq, "disqualified", "finished"))
    )
    runners = pd.DataFrame(
        {
            "race_id": race_ids[race],
            "horse_id": horse_ids[horse],
            "horse_name": horse_names[horse],
            "saddle_no": col["saddle"],
            "draw": np.where(starter, col["draw"], -1),
            "jockey_id": jockey_ids[col["jockey"]],
            "trainer_id": trainer_ids[col["trainer"]],
            "age": col["age"],
            "sex": sex_codes[col["sex"]],
            "carried_weight_lbs": col["weight"],
            "horse_weight_lbs": np.where(starter, col["bodyweight"], np.nan),
            "rating": col["rating"],
            "gear": gear_codes[col["gear"]],
            "status": status,
            "finish_position": position,
            "margin_lengths": np.where(finished, margin, np.nan),
            "finish_time_s": np.where(timed, time, np.nan),
            "running_positions": position_strings,
            "section_times_s": section_strings,
            "win_odds": win_odds,
            "place_odds": place_odds,
        }
    )
    runners["draw"] = runners["draw"].astype("Int64").mask(~starter)
    runners["finish_position"] = runners["finish_position"].astype("Int64").mask(~finished)
    runners = _typed(
        runners,
        {
            "saddle_no": "Int64",
            "age": "Int64",
            "carried_weight_lbs": "Float64",
            "horse_weight_lbs": "Float64",
            "rating": "Float64",
            "margin_lengths": "Float64",
            "finish_time_s": "Float64",
            "win_odds": "Float64",
            "place_odds": "Float64",
        },
        [],
    )

    f = pop.f
    idx = np.arange(pop.n)
    sire_names = np.array(_names(np.arange(N_SIRES), _S1, _S2, _S1), dtype=object)
    dam_names = np.array(_names(np.arange(pop.n_dams), _D1, _D2, _D1), dtype=object)
    ran = np.zeros(pop.n, dtype=bool)
    ran[horse] = True
    horses = pd.DataFrame(
        {
            "horse_id": horse_ids,
            "horse_name": horse_names,
            "sire": sire_names[f["sire"][idx]],
            "dam": dam_names[f["dam"][idx]],
            "damsire": sire_names[pop.dam_damsire[f["dam"][idx]]],
            "country_of_birth": np.array(COUNTRIES, dtype=object)[f["country"][idx]],
            "sex": sex_codes[f["sex"][idx]],
            "colour": np.array(COLOURS[0], dtype=object)[f["colour"][idx]],
            "foaled_year": f["foaled_year"][idx],
        }
    )[ran].reset_index(drop=True)
    horses = _typed(horses, {"foaled_year": "Int64"}, [])

    truth = pd.DataFrame(
        {
            "race_id": race_ids[race],
            "horse_id": horse_ids[horse],
            "true_win_prob": np.where(starter, true_p, 0.0),
            "mu": col["mu"],
            "ability": col["ability"],
            "jockey_eff": col["jockey_eff"],
            "trainer_eff": col["trainer_eff"],
            "weight_eff": col["weight_eff"],
            "distance_eff": col["distance_eff"],
            "going_eff": col["going_eff"],
            "surface_eff": col["surface_eff"],
            "draw_eff": col["draw_eff"],
            "pace_eff": col["pace_eff"],
            "fitness_eff": col["fitness_eff"],
            "form_eff": col["form_eff"],
            "early_speed": col["early"],
            "performance": np.where(starter, perf, np.nan),
            "sire_distance_pref_m": np.exp(pop.sire_dist[f["sire"][horse]]),
            "distance_pref_m": np.exp(f["dist"][horse]),
        }
    )
    truth = truth.astype({"race_id": "string", "horse_id": "string"})
    logger.info("Simulated %d races, %d runners, %d horses", len(races), len(runners), len(horses))
    return SimulatedResults(races=races, runners=runners, horses=horses, truth=truth)


def _typed(frame: pd.DataFrame, numeric: dict[str, str], skip: list[str]) -> pd.DataFrame:
    """Nullable dtypes: the given numeric ones, ``string`` (empty string -> missing) for the rest."""
    out = frame.copy()
    for name in out.columns:
        if name in skip:
            continue
        if name in numeric:
            out[name] = out[name].astype(numeric[name])
        elif out[name].dtype != "Int64":
            s = out[name].astype("string")
            out[name] = s.mask(s == "")
    return out


def _place_odds(
    q: np.ndarray, race: np.ndarray, slot: np.ndarray, starter: np.ndarray, n_races: int, rng: np.random.Generator
) -> np.ndarray:
    """Place odds from the market's own chances by Harville: 3 places with 7+ starters, 2 with 4-6."""
    p = np.zeros((n_races, MAX_FIELD))
    p[race, slot] = np.where(starter, q, 0.0)
    n_start = np.bincount(race, weights=starter, minlength=n_races)
    out = np.empty((n_races, MAX_FIELD))
    for lo in range(0, n_races, 8192):
        pp = p[lo : lo + 8192]
        one_minus = np.maximum(1.0 - pp, 1e-9)
        a = pp / one_minus  # P(i first) / (1 - p_i)
        second = pp * (a.sum(axis=1, keepdims=True) - a)
        # P(i, k, j) = p_i * p_k / (1 - p_i) * p_j / (1 - p_i - p_k)
        b = (
            pp[:, :, None]
            * pp[:, None, :]
            / (one_minus[:, :, None] * np.maximum(1.0 - pp[:, :, None] - pp[:, None, :], 1e-9))
        )
        idx = np.arange(MAX_FIELD)
        b[:, idx, idx] = 0.0
        third = pp * (b.sum(axis=(1, 2))[:, None] - b.sum(axis=2) - b.sum(axis=1))
        three = (n_start[lo : lo + 8192] >= 7)[:, None]
        out[lo : lo + 8192] = pp + second + np.where(three, third, 0.0)
    p_place = np.clip(out[race, slot], 1e-6, 0.999)
    odds = 1.0 + np.maximum(1.0 / (p_place * PLACE_OVERROUND) - 1.0, 0.05)
    odds = np.where(odds < 10, np.round(odds, 1), np.round(odds * 2) / 2)
    odds = np.clip(odds, 1.05, 99.0)
    recorded = starter & (n_start[race] >= 4) & (rng.random(len(q)) >= 0.03)
    return np.where(recorded, odds, np.nan)


def write_results(
    results: SimulatedResults, out_dir: Path, *, file_format: Literal["csv", "parquet"] = "csv"
) -> list[Path]:
    """Write races, runners and horses in the racequant format to ``out_dir`` (created); return the paths."""
    if file_format not in ("csv", "parquet"):
        raise ConfigurationError(
            f"The 'file_format' parameter of write_results must be 'csv' or 'parquet'. Got {file_format!r} instead."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    frames = {
        "races": results.races[list(RACE_FILE_COLUMNS)],
        "runners": results.runners[list(RUNNER_FILE_COLUMNS)],
        "horses": results.horses[list(HORSE_FILE_COLUMNS)],
    }
    for name, frame in frames.items():
        path = out_dir / f"{name}.{file_format}"
        if file_format == "csv":
            if name == "races":
                frame = frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d"))
            frame.to_csv(path, index=False, lineterminator="\n")
        else:
            if name == "races":
                frame = frame.assign(date=frame["date"].dt.date)
            frame.to_parquet(path, index=False)
        paths.append(path)
        logger.info("Wrote %d rows to %s", len(frame), path)
    return paths
