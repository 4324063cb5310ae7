#!/usr/bin/env python3
"""Generate the calendar-event instruction data set (train + held-out eval).

    python3 scripts/make_calendar_data.py [--out-dir examples/data] [--check]

Writes, deterministically (fixed seed, standard library only; reruns are byte-identical):

    examples/data/calendar-train.jsonl   480 conversations
    examples/data/calendar-eval.jsonl     80 held-out conversations

Each line is {"messages": [system, user, assistant]} in the layout of
examples/data/calendar-sample.jsonl: the user turn is a free-text request for a calendar
event, the assistant turn the event as JSON with keys title, day, time, location (in that
order; time as 24h "HH:MM", location null when the request names none).

Eval lines 1-52 are in-distribution (every template, event kind, name and place also occurs
in train; only the combinations are new, and no request text is shared). Lines 53-80 each
contain exactly one component that never occurs in train, in four blocks of 7: a phrasing
template (53-59), a name of a person, company or city (60-66), a place (67-73), an event
kind (74-80).

Every answer field is derivable from the request: title is the event phrase with its
article dropped and its first letter capitalised; day is the day expression as typed
(without a leading "on"), with weekday and month names capitalised and everything else in
lower case; time is the request's time normalised to 24h; location is the place as typed
(without its preposition), or null. The script asserts these properties, that no request
occurs twice (after case and punctuation folding) across train, eval and the sample file,
and that the held-out components are absent from train.

--check regenerates in memory and exits non-zero if the files on disk differ.
"""

import argparse
import json
import random
import re
import sys
from pathlib import Path

SEED = 20250611
N_TRAIN = 480
N_EVAL_IN = 52
N_EVAL_PER_HELDOUT = 7  # x 4 kinds of held-out component = 28
HELDOUT_KINDS = ["template", "name", "place", "event"]

SYSTEM = (
    "Convert the request into a JSON calendar event with keys title, day, time (24h HH:MM) "
    "and location (null if none). Reply with JSON only."
)

# --------------------------------------------------------------------------------------
# Vocabulary. Each pool is (train, eval_only); eval_only items never appear in train.
# --------------------------------------------------------------------------------------

NAMES = (
    ["Priya", "Marco", "Aisha", "Tom", "Jonas", "Mei", "Carlos", "Fatima", "Olga", "Kenji",
     "Sara", "Liam", "Noah", "Elena", "Raj", "Zoë", "Ben", "Hannah", "Diego", "Amara",
     "Yusuf", "Chloe", "Mateo", "Ingrid", "Tariq", "Nadia", "Oscar", "Lucia", "Sven", "Grace",
     "Omar", "Julia", "Wei", "Daniel", "Farah", "José", "Anya", "Kofi", "Ruth", "Emil"],
    ["Thandiwe", "Bartholomew", "Xiomara", "Leif", "Nkechi", "Siobhán", "Radek", "Eun-ji",
     "Malak", "Łukasz"],
)
COMPANIES = (
    ["Acme Corp", "Globex", "Initech", "Northwind", "Umbrella Health", "Stark Logistics",
     "Hooli", "Contoso"],
    ["Vandelay Industries", "Wonka Foods"],
)
CITIES = (
    ["Lisbon", "Berlin", "Chicago", "Tokyo", "Nairobi", "Toronto", "Madrid", "Seoul", "Boston",
     "Dublin"],
    ["Reykjavík", "Montevideo", "Hanoi"],
)

PROPER_NOUNS = {"name": NAMES, "company": COMPANIES, "city": CITIES}

# Places by category: (place, preposition used before it in a request).
PLACES = {
    "work": (
        [("room 4B", "in"), ("conference room 2", "in"), ("the Orion room", "in"),
         ("the Atlas room", "in"), ("the boardroom", "in"), ("the 5th floor lounge", "in"),
         ("Hall B", "in")],
        [("the Kestrel room", "in"), ("room 7C", "in")],
    ),
    "virtual": (
        [("Zoom", "on"), ("Google Meet", "on"), ("Teams", "on")],
        [("Webex", "on")],
    ),
    "cafe": (
        [("Blue Bottle", "at"), ("the corner bakery", "at"), ("Kaffeehaus Nord", "at"),
         ("Bean There", "at"), ("the café downstairs", "at"), ("Espresso Lab", "at"),
         ("Café Olé", "at")],
        [("Moka & Crumb", "at"), ("the Tin Kettle", "at")],
    ),
    "restaurant": (
        [("Trattoria Roma", "at"), ("the Thai place on Elm St", "at"), ("Sakura Sushi", "at"),
         ("Bistro 42", "at"), ("The Green Fork", "at"), ("Nando's", "at"),
         ("Taquería El Sol", "at")],
        [("Casa Olivo", "at"), ("the Lantern Noodle Bar", "at")],
    ),
    "bar": (
        [("Bar Luna", "at"), ("the rooftop bar", "at"), ("The Crown & Anchor", "at"),
         ("Brewdog Camden", "at")],
        [("The Velvet Owl", "at"), ("Vinoteca Sur", "at")],
    ),
    "dental": (
        [("Riverside Dental", "at"), ("Bright Smile Dental", "at"), ("Dr. Patel's office", "at")],
        [("Pearl Dental Studio", "at")],
    ),
    "clinic": (
        [("City Health Clinic", "at"), ("St. Mary's Hospital", "at"), ("the walk-in clinic", "at"),
         ("Dr. Nguyen's office", "at"), ("Westside Physio", "at")],
        [("Harbourview Medical Centre", "at"), ("Dr. Okafor's clinic", "at")],
    ),
    "vet": (
        [("Paws & Claws Vet", "at"), ("Greenway Animal Hospital", "at")],
        [("Tailwaggers Clinic", "at")],
    ),
    "fitness": (
        [("studio 3", "in"), ("the YMCA", "at"), ("Iron Temple Gym", "at"),
         ("Riverside Park", "at"), ("the community pool", "at"), ("FlowState Yoga", "at"),
         ("PureGym", "at")],
        [("Summit Climbing Hall", "at"), ("the Eastside Rec Center", "at")],
    ),
    "school": (
        [("Lincoln Elementary", "at"), ("Oakwood High", "at"), ("Maple Grove Primary", "at"),
         ("the school gym", "in")],
        [("Westbrook Academy", "at")],
    ),
    "lessons": (
        [("the music school", "at"), ("Ms. Kim's studio", "at"), ("the library annex", "at"),
         ("Harmony Music", "at")],
        [("Crescendo Academy", "at")],
    ),
    "field": (
        [("Riverside Park", "at"), ("Field 4", "on"), ("the rec ground", "at")],
        [("Kingsway Fields", "at")],
    ),
    "air": (
        [("Terminal 2", "from"), ("JFK Terminal 4", "from"), ("Heathrow Terminal 5", "from"),
         ("SFO", "from")],
        [("Changi Terminal 3", "from")],
    ),
    "pickup": (
        [("Terminal 2", "at"), ("arrivals hall B", "at"), ("Heathrow Terminal 5", "at")],
        [("Changi Terminal 3", "at")],
    ),
    "rail": (
        [("Union Station", "from"), ("the central station", "from"), ("platform 9", "from"),
         ("Penn Station", "from")],
        [("Gare du Nord", "from")],
    ),
    "hotel": (
        [("the Grand Hotel", "at"), ("Hotel Aurora", "at"), ("the Marriott downtown", "at")],
        [("the Alpenhof Inn", "at")],
    ),
    "barber": (
        [("Main Street Barbers", "at"), ("Studio Hair", "at"), ("Fade Lab", "at")],
        [("Clip Joint", "at")],
    ),
    "garage": (
        [("QuickLube on 9th", "at"), ("Joe's Garage", "at"), ("the Toyota dealer", "at")],
        [("Halfords Croydon", "at")],
    ),
    "store": (
        [("Trader Joe's", "at"), ("the farmers market", "at"), ("Lidl", "at"),
         ("Whole Foods", "at")],
        [("the Saturday market", "at")],
    ),
    "govt": (
        [("the downtown DMV", "at"), ("City Hall", "at"), ("the passport office", "at")],
        [("the county clerk's office", "at")],
    ),
    "venue": (
        [("the community center", "at"), ("Mario's Pizzeria", "at"), ("the bowling alley", "at"),
         ("the town library", "at"), ("the Old Mill", "at")],
        [("the Fernwood Library", "at")],
    ),
    "cleaner": (
        [("Speedy Cleaners", "from"), ("the dry cleaner on Oak St", "from")],
        [("Pressed & Co", "from")],
    ),
}

# Hours (24h) that suit each kind of event; minutes are drawn separately.
H_WORK = [8, 9, 9, 10, 10, 11, 11, 13, 14, 14, 15, 15, 16, 17]
H_STANDUP = [8, 9, 9, 9, 10, 10]
H_DAY = [8, 9, 10, 11, 13, 14, 15, 16, 17]
H_LUNCH = [11, 12, 12, 12, 13, 13]
H_COFFEE = [7, 8, 9, 10, 11, 14, 15, 16]
H_BRUNCH = [10, 11, 11, 12]
H_DINNER = [18, 19, 19, 20, 20, 21]
H_EVENING = [17, 18, 19, 20, 21, 22]
H_SPORT = [6, 6, 7, 7, 8, 12, 17, 18, 18, 19, 20]
H_KIDS = [8, 15, 15, 16, 16, 17, 18, 19]
H_ANY = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
H_LATE = [0, 0, 0, 22, 23, 23]
H_REMIND = [7, 8, 9, 12, 17, 18, 19, 20, 21]

# Events: (phrase, kind, articles, place category or None, hours, place probability).
# kind "n" = noun phrase ("dentist appointment"), "v" = verb phrase ("call mom").
# The title is the phrase with its first letter capitalised. {name}/{company}/{city}
# are filled from the pools above.
EV_TRAIN = [
    # work
    ("team standup", "n", ["", "the ", "our "], "work", H_STANDUP, 0.5),
    ("daily standup", "n", ["", "the ", "our "], "virtual", H_STANDUP, 0.5),
    ("sprint planning", "n", [""], "work", H_WORK, 0.7),
    ("team retro", "n", ["", "the ", "our "], "work", H_WORK, 0.7),
    ("1:1 with {name}", "n", ["", "a ", "my "], "work", H_WORK, 0.6),
    ("project kickoff", "n", ["", "the ", "a "], "work", H_WORK, 0.7),
    ("budget review", "n", ["", "the ", "a "], "work", H_WORK, 0.7),
    ("design review", "n", ["", "the ", "a "], "work", H_WORK, 0.7),
    ("all-hands meeting", "n", ["", "the ", "an "], "work", H_WORK, 0.6),
    ("performance review with {name}", "n", ["", "my ", "a "], "work", H_WORK, 0.6),
    ("onboarding session with {name}", "n", ["", "an "], "work", H_WORK, 0.6),
    ("client call with {company}", "n", ["", "a ", "the "], "virtual", H_WORK, 0.6),
    ("demo for {company}", "n", ["", "a ", "the "], "virtual", H_WORK, 0.6),
    ("interview with {name}", "n", ["", "an ", "my "], "work", H_WORK, 0.6),
    ("lunch and learn", "n", ["", "the ", "a "], "work", H_LUNCH, 0.7),
    ("board meeting", "n", ["", "the ", "a "], "work", H_WORK, 0.7),
    ("quarterly planning", "n", [""], "work", H_WORK, 0.7),
    ("submit expense report", "v", [""], None, H_DAY, 0.0),
    ("send the weekly report", "v", [""], None, H_DAY, 0.0),
    # social
    ("lunch with {name}", "n", [""], "restaurant", H_LUNCH, 0.7),
    ("coffee with {name}", "n", [""], "cafe", H_COFFEE, 0.7),
    ("dinner with {name}", "n", [""], "restaurant", H_DINNER, 0.7),
    ("drinks with {name}", "n", [""], "bar", H_EVENING, 0.7),
    ("team happy hour", "n", ["", "the ", "a "], "bar", H_EVENING, 0.8),
    ("brunch with {name}", "n", [""], "cafe", H_BRUNCH, 0.7),
    ("{name}'s birthday party", "n", [""], "venue", H_EVENING, 0.7),
    ("birthday dinner for {name}", "n", ["", "the "], "restaurant", H_DINNER, 0.7),
    ("date night", "n", [""], "restaurant", H_DINNER, 0.6),
    ("book club", "n", ["", "my "], "venue", H_EVENING, 0.6),
    ("game night", "n", [""], "venue", H_EVENING, 0.6),
    ("video call with {name}", "n", ["", "a "], "virtual", H_EVENING, 0.5),
    ("call mom", "v", [""], None, H_REMIND, 0.0),
    ("call dad", "v", [""], None, H_REMIND, 0.0),
    ("call grandma", "v", [""], None, H_REMIND, 0.0),
    ("call {name}", "v", [""], None, H_REMIND, 0.0),
    # health
    ("dentist appointment", "n", ["", "a ", "my ", "the "], "dental", H_DAY, 0.7),
    ("teeth cleaning", "n", ["", "a ", "my "], "dental", H_DAY, 0.7),
    ("doctor's appointment", "n", ["", "a ", "my "], "clinic", H_DAY, 0.7),
    ("eye exam", "n", ["", "an ", "my "], "clinic", H_DAY, 0.7),
    ("physio session", "n", ["", "a ", "my "], "clinic", H_DAY, 0.7),
    ("therapy session", "n", ["", "my "], "clinic", H_DAY, 0.5),
    ("blood test", "n", ["", "a ", "my "], "clinic", [7, 8, 8, 9, 10], 0.7),
    ("flu shot", "n", ["", "a ", "my "], "clinic", H_DAY, 0.7),
    ("dermatologist appointment", "n", ["", "a ", "my "], "clinic", H_DAY, 0.7),
    ("vet appointment", "n", ["", "a ", "the "], "vet", H_DAY, 0.7),
    ("take medication", "v", [""], None, [7, 8, 8, 20, 21, 22], 0.0),
    # fitness
    ("yoga class", "n", ["", "my "], "fitness", H_SPORT, 0.7),
    ("gym session", "n", ["", "a "], "fitness", H_SPORT, 0.6),
    ("spin class", "n", ["", "a ", "my "], "fitness", H_SPORT, 0.7),
    ("swim practice", "n", [""], "fitness", H_SPORT, 0.7),
    ("run club", "n", [""], "fitness", H_SPORT, 0.6),
    ("pilates", "n", [""], "fitness", H_SPORT, 0.7),
    ("tennis with {name}", "n", [""], "fitness", H_SPORT, 0.6),
    ("climbing with {name}", "n", [""], "fitness", H_SPORT, 0.6),
    ("soccer practice", "n", [""], "field", H_KIDS, 0.7),
    # family and school
    ("parent-teacher meeting", "n", ["", "the ", "a "], "school", H_KIDS, 0.7),
    ("pick up {name} from school", "v", [""], None, [14, 15, 15, 16], 0.0),
    ("{name}'s piano recital", "n", [""], "school", H_KIDS, 0.7),
    ("school play", "n", ["", "the "], "school", H_KIDS, 0.7),
    ("piano lesson", "n", ["", "a ", "my "], "lessons", H_KIDS, 0.7),
    ("guitar lesson", "n", ["", "a ", "my "], "lessons", H_KIDS, 0.7),
    ("math tutoring", "n", [""], "lessons", H_KIDS, 0.6),
    ("soccer game", "n", ["", "the "], "field", H_KIDS, 0.7),
    # travel
    ("flight to {city}", "n", ["", "my ", "the "], "air", H_ANY, 0.8),
    ("train to {city}", "n", ["", "my ", "the "], "rail", H_ANY, 0.8),
    ("airport pickup for {name}", "n", ["", "an "], "pickup", H_ANY, 0.7),
    ("hotel check-in", "n", [""], "hotel", [14, 15, 16, 17, 18], 0.7),
    # errands and chores
    ("haircut", "n", ["", "a ", "my "], "barber", H_DAY, 0.7),
    ("car service", "n", ["", "a ", "the "], "garage", H_DAY, 0.7),
    ("oil change", "n", ["", "an "], "garage", H_DAY, 0.7),
    ("pick up dry cleaning", "v", [""], "cleaner", H_DAY, 0.5),
    ("grocery run", "n", ["", "a "], "store", H_DAY + H_EVENING, 0.7),
    ("grocery shopping", "n", [""], "store", H_DAY + H_EVENING, 0.7),
    ("pay rent", "v", [""], None, H_DAY, 0.0),
    ("renew passport", "v", [""], "govt", H_DAY, 0.4),
    ("DMV appointment", "n", ["", "a ", "my ", "the "], "govt", H_DAY, 0.6),
    ("plumber visit", "n", ["", "a ", "the "], None, H_DAY, 0.0),
    ("server maintenance", "n", ["", "the "], None, H_LATE, 0.0),
    ("release deploy", "n", ["", "the "], None, H_LATE + [18], 0.0),
    ("concert ticket sale", "n", ["", "the "], None, [0, 0, 9, 10], 0.0),
]
EV_EVAL = [
    ("pottery class", "n", ["", "a ", "my "], "fitness", H_SPORT, 0.7),
    ("wine tasting with {name}", "n", [""], "bar", H_EVENING, 0.7),
    ("tax advisor meeting", "n", ["", "a ", "my ", "the "], "work", H_DAY, 0.6),
    ("band rehearsal", "n", ["", "the "], "venue", H_EVENING, 0.7),
    ("return library books", "v", [""], "venue", H_DAY, 0.5),
]

# Request templates: (text, event kinds it suits). Placeholders:
#   {ev}  event phrase with an optional article   {evb}/{Evb} bare event phrase (capitalised)
#   {day} day, with or without "on"               {dayp} day with "on" where grammar needs it
#   {dayb}/{Dayb} bare day (capitalised)
#   {time} "at <time>"                            {timeb} bare time
#   {loc} " <prep> <place>" or ""                 {locc} ", <place>" or ""
TPL_TRAIN = [
    ("Schedule {ev} {day} {time}{loc}.", "n"),
    ("Put {ev} on my calendar for {dayb} {time}{loc}.", "n"),
    ("Can you book {ev}{loc} {dayp} {time}?", "n"),
    ("Remind me about {ev} {day} {time}{loc}.", "n"),
    ("Remind me to {evb} {day} {time}{loc}.", "v"),
    ("Add {ev} to my calendar: {dayb}, {timeb}{locc}.", "n"),
    ("Put '{evb}' in the calendar {dayp} {time}{loc}.", "nv"),
    ("{Evb} {day} {time}{loc}.", "nv"),
    ("New event: {evb}, {dayb}, {timeb}{locc}.", "nv"),
    ("I've got {ev} {day} {time}{loc}, please add it to my calendar.", "n"),
    ("Please add {ev} {day} {time}{loc}.", "n"),
    ("Need to {evb} {day} {time}{loc}, can you put that in my calendar?", "v"),
    ("Set up {ev} {day} {time}{loc}.", "n"),
    ("Block out time for {ev} {day} {time}{loc}.", "n"),
    ("Create an event for {ev}{loc} {dayp} {time}.", "n"),
    ("Could you schedule {ev} for {dayb} {time}{loc}? Thanks.", "n"),
    ("{Dayb}, {timeb}: {evb}{loc}.", "nv"),
    ("Turn this into a calendar event: {evb} {day} {time}{loc}.", "nv"),
    ("Make an event: {evb} {dayp} {time}{loc}.", "nv"),
    ("Calendar entry please: {evb}, {dayb} {time}{locc}.", "nv"),
    ("Don't let me forget {ev} {day} {time}{loc}.", "n"),
    ("Book me in for {ev} {day} {time}{loc}.", "n"),
    ("{Evb}{loc}, {dayb} {time}. Add it please.", "nv"),
    ("There's {ev} {day} {time}{loc}, add it.", "n"),
    ("Heads up: {evb} {day} {time}{loc}. Put it in the calendar.", "nv"),
    ("Save the date: {evb} {dayp} {time}{loc}.", "nv"),
    ("Add an event called '{evb}' {dayp} {time}{loc}.", "nv"),
    ("Can you remind me to {evb} {day} {time}{loc}?", "v"),
    ("I need a reminder to {evb} {day} {time}{loc}.", "v"),
    ("Reminder: {evb} {day} {time}{loc}.", "nv"),
    ("Can you put {ev} in my calendar {dayp} {time}{loc}?", "n"),
    ("Please schedule {ev}{loc} {dayp}, {timeb}.", "n"),
]
TPL_EVAL = [
    ("Could you pencil in {ev} for {dayb} {time}{loc}?", "n"),
    ("Mark my calendar: {evb}{loc}, {dayb}, {timeb}.", "nv"),
    ("Jot down {ev} for {dayb} {time}{loc}, would you?", "n"),
    ("Note to self, {evb} {day} {time}{loc}.", "nv"),
    ("Slot in {ev} {day} {time}{loc} please.", "n"),
    ("Ping me to {evb} {day} {time}{loc}.", "v"),
]

PREFIXES = ["Hey, ", "Hi! ", "Quick one: ", "Ugh, almost forgot. ", "Morning! ",
            "OK so ", "Sorry to bother you, ", "Hello, ", "One more thing: "]
SUFFIXES = [" Thanks!", " Thank you so much.", " Cheers.", " That's all.", " Appreciate it!",
            " It's important, so don't lose it.", " I keep forgetting these things.",
            " Thanks in advance.", " My week is a mess."]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEEKDAY_ABBR = ["Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri", "Sat", "Sun"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
MONTH_ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
CAPITALISED_DAY_WORDS = {w.lower(): w for w in WEEKDAYS + WEEKDAY_ABBR + MONTHS + MONTH_ABBR}


def ordinal(n):
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def canonical_day(text):
    """Weekday and month names capitalised, everything else lower case."""
    return " ".join(CAPITALISED_DAY_WORDS.get(w.lower(), w.lower()) for w in text.split(" "))


def cap_first(s):
    return s[:1].upper() + s[1:]


# --------------------------------------------------------------------------------------
# Days and times
# --------------------------------------------------------------------------------------

def make_day(rng):
    """Returns (bare day as typed, takes_on): takes_on says whether 'on' may precede it."""
    r = rng.random()
    if r < 0.24:
        return rng.choice(WEEKDAYS), True
    if r < 0.29:
        return rng.choice(WEEKDAY_ABBR), True
    if r < 0.43:
        return f"{rng.choice(['next', 'next', 'this'])} {rng.choice(WEEKDAYS)}", False
    if r < 0.57:
        return rng.choice(["tomorrow", "tomorrow", "tomorrow", "today", "the day after tomorrow"]), False
    m = rng.randrange(12)
    d = rng.randint(1, MONTH_DAYS[m])
    if r < 0.69:
        return f"{MONTHS[m]} {d}", True
    if r < 0.74:
        return f"{MONTH_ABBR[m]} {d}", True
    if r < 0.79:
        return f"{d} {MONTHS[m]}", True
    if r < 0.90:
        return f"the {ordinal(d)}", True
    return f"{rng.choice([2026, 2026, 2027])}-{m + 1:02d}-{d:02d}", True


def period_of(h):
    if 5 <= h <= 11:
        return "in the morning"
    if 13 <= h <= 16:
        return "in the afternoon"
    if 17 <= h <= 20:
        return "in the evening"
    if 21 <= h <= 23:
        return "at night"
    return None


def make_minute(rng, h):
    if h == 0:
        return 0
    return pick_weighted(rng, [(40, 0), (20, 30), (9, 15), (9, 45), (3, 10), (3, 20), (3, 40),
                               (3, 50), (2, 5), (2, 25), (2, 35), (2, 55), (2, 50)])


def time_phrases(h, m):
    """All (weight, phrase) ways to say h:m; every phrase means exactly h:m."""
    out = []
    h12 = h % 12 or 12
    if (h, m) == (12, 0):
        out += [(3, "noon"), (1, "midday"), (1, "12 noon"), (1, "12pm")]
    if (h, m) == (0, 0):
        out += [(5, "midnight"), (1, "00:00")]
    if h != 0 and (h, m) != (12, 0):
        ap = "am" if h < 12 else "pm"
        dotted = "a.m." if h < 12 else "p.m."
        if m == 0:
            out += [(4, f"{h12}{ap}"), (2, f"{h12} {ap}"), (1, f"{h12}{ap.upper()}"),
                    (1, f"{h12} {dotted}"), (1, f"{h12}:00{ap}")]
        else:
            out += [(4, f"{h12}:{m:02d}{ap}"), (2, f"{h12}:{m:02d} {ap}"),
                    (1, f"{h12}:{m:02d} {ap.upper()}"), (1, f"{h12}:{m:02d} {dotted}"),
                    (1, f"{h12}.{m:02d}{ap}")]
    if h != 0:
        out += [(5, f"{h:02d}:{m:02d}")]
    p = period_of(h)
    if p:
        if m == 0:
            out += [(1, f"{h12} {p}"), (1, f"{h12} o'clock {p}"), (1, f"around {h12} {p}")]
        elif m == 30:
            out += [(2, f"half past {h12} {p}")]
        elif m == 15:
            out += [(2, f"quarter past {h12} {p}")]
        elif m == 45 and period_of(h + 1) == p:
            out += [(2, f"quarter to {(h + 1) % 12 or 12} {p}")]
        else:
            out += [(1, f"{h12}:{m:02d} {p}")]
    return out


def pick_weighted(rng, pairs):
    total = sum(w for w, _ in pairs)
    x = rng.random() * total
    for w, v in pairs:
        x -= w
        if x < 0:
            return v
    return pairs[-1][1]


# Independent check of the time normalisation: parse each phrase back.
_TIME_RE = [
    (re.compile(r"^(\d{2}):(\d{2})$"), lambda g: (int(g[0]), int(g[1]))),
    (re.compile(r"^(\d{1,2})(?:[:.](\d{2}))? ?(am|pm|AM|PM|a\.m\.|p\.m\.)$"),
     lambda g: ((int(g[0]) % 12) + (12 if g[2][0] in "pP" else 0), int(g[1] or 0))),
]
_WORD_RE = re.compile(
    r"^(?:(half past|quarter past|quarter to|around) )?(\d{1,2})(?::(\d{2}))?(?: o'clock)? "
    r"(in the morning|in the afternoon|in the evening|at night)$")


def parse_time(p):
    fixed = {"noon": (12, 0), "midday": (12, 0), "12 noon": (12, 0), "midnight": (0, 0)}
    if p in fixed:
        return fixed[p]
    for rx, f in _TIME_RE:
        mo = rx.match(p)
        if mo:
            return f(mo.groups())
    mo = _WORD_RE.match(p)
    assert mo, p
    mod, hh, mm, per = mo.groups()
    h = int(hh) % 12 + (0 if per == "in the morning" else 12)
    m = int(mm or 0)
    if mod == "half past":
        m = 30
    elif mod == "quarter past":
        m = 15
    elif mod == "quarter to":
        h, m = h - 1, 45
    return h, m


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------

def fold(s):
    """Request identity for the duplicate check: case, punctuation and spacing ignored."""
    return " ".join(re.sub(r"[^\w]+", " ", s.casefold()).split())


class Decks:
    """Draws from shuffled copies of each pool, reshuffling when one runs out, so every
    item of a pool is used about equally often (and all of them appear in train)."""

    def __init__(self, rng):
        self.rng = rng
        self.decks = {}

    def draw(self, key, items):
        deck = self.decks.get(key)
        if not deck:
            deck = list(items)
            self.rng.shuffle(deck)
            self.decks[key] = deck
        return deck.pop()


def make_example(rng, decks, heldout=None):
    """One (request, answer dict, components). heldout: which component comes from an
    eval-only pool (None: everything from the train pools)."""
    split = lambda kind: 1 if heldout == kind else 0  # noqa: E731
    # The event first, then a template that suits it ("n" or "v" phrase).
    if heldout is None or heldout == "template":
        event = decks.draw("event", EV_TRAIN)
    else:
        candidates = EV_EVAL if heldout == "event" else EV_TRAIN
        if heldout == "name":
            candidates = [e for e in candidates if "{" in e[0]]
        if heldout == "place":
            candidates = [e for e in candidates if e[3] and e[5] > 0]
        event = decks.draw(("event", heldout), candidates)
    phrase, kind, articles, cat, hours, p_place = event
    templates = TPL_EVAL if heldout == "template" else TPL_TRAIN
    tpl_text, _ = decks.draw(("tpl", kind, split("template")),
                             [t for t in templates if kind in t[1]])

    # The proper noun in the event phrase (a person, company or city), if any.
    slot = next((k for k in PROPER_NOUNS if "{" + k + "}" in phrase), None)
    noun = decks.draw((slot, split("name")), PROPER_NOUNS[slot][split("name")]) if slot else None
    ev_bare = phrase.format(**{slot: noun}) if slot else phrase
    title = cap_first(ev_bare)
    article = rng.choice(articles)

    place = None
    if cat and (heldout == "place" or rng.random() < p_place):
        place, prep = decks.draw(("place", cat, split("place")), PLACES[cat][split("place")])

    day_bare, takes_on = make_day(rng)
    h = rng.choice(hours)
    m = make_minute(rng, h)
    time_bare = pick_weighted(rng, time_phrases(h, m))
    assert parse_time(time_bare) == (h, m), (time_bare, h, m)

    # Sloppy typing: template words and day in lower case, chat shorthand, no final
    # punctuation. Event phrases are already lower case apart from names and acronyms,
    # which stay as typed, as do places.
    sloppy = rng.random() < 0.2
    text = tpl_text
    day_typed = day_bare
    if sloppy:
        text = text.lower()  # also turns {Evb}/{Dayb} into {evb}/{dayb}
        text = text.replace(" you ", " u ").replace("please", "pls").replace("calendar", "cal")
        text = text.rstrip(".?!")
        day_typed = day_bare.lower()
        time_bare = time_bare.replace("AM", "am").replace("PM", "pm")

    day_opt = f"on {day_typed}" if takes_on and rng.random() < 0.5 else day_typed
    day_prep = f"on {day_typed}" if takes_on else day_typed
    fields = {
        "ev": article + ev_bare,
        "evb": ev_bare,
        "Evb": cap_first(ev_bare),
        "day": day_opt,
        "dayp": day_prep,
        "dayb": day_typed,
        "Dayb": cap_first(day_typed),
        "time": f"at {time_bare}",
        "timeb": time_bare,
        "loc": f" {prep} {place}" if place else "",
        "locc": f", {place}" if place else "",
    }
    request = text.format(**fields)

    r = rng.random()
    if r < 0.12:
        pre = rng.choice(PREFIXES)
        if sloppy:
            pre = pre.lower()
        if pre.endswith((", ", ": ", "so ")) and not request.startswith(("I ", "I'")):
            request = request[:1].lower() + request[1:]
        request = pre + request
    elif r < 0.24:
        suf = rng.choice(SUFFIXES)
        request = request + (suf.lower().rstrip(".!") if sloppy else suf)
    if sloppy and rng.random() < 0.3:
        request += rng.choice([" pls", " thx", " ty"])

    # A time typed as "p.m." already ends the sentence.
    request = request.replace("a.m..", "a.m.").replace("p.m..", "p.m.")

    answer = {"title": title, "day": canonical_day(day_bare), "time": f"{h:02d}:{m:02d}",
              "location": place}
    comps = {"template": tpl_text, "event": phrase, "name": noun, "place": place}
    return request, answer, comps


def check_example(request, answer):
    low = request.casefold()
    assert answer["title"].casefold() in low, (request, answer)
    assert answer["day"].casefold() in low, (request, answer)
    assert re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", answer["time"]), answer
    if answer["location"] is not None:
        assert answer["location"] in request, (request, answer)
    n_words = len(request.split())
    assert 4 <= n_words <= 34, (n_words, request)


def conversation(request, answer):
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": request},
        {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)},
    ]}


def generate(sample_requests):
    rng = random.Random(SEED)
    decks = Decks(rng)
    seen = {fold(r) for r in sample_requests}

    def draw(heldout):
        while True:
            request, answer, comps = make_example(rng, decks, heldout)
            if fold(request) in seen:
                continue
            seen.add(fold(request))
            check_example(request, answer)
            return request, answer, comps

    # Train first, then eval; the duplicate check spans both, so no request text is shared.
    train = [draw(None) for _ in range(N_TRAIN)]
    eval_in = [draw(None) for _ in range(N_EVAL_IN)]
    eval_out = [draw(k) for k in HELDOUT_KINDS for _ in range(N_EVAL_PER_HELDOUT)]

    # Every train-pool component occurs in train, so in-distribution eval sees nothing new
    # apart from the combination.
    used = {k: {c[k] for _, _, c in train} for k in ("template", "event", "name", "place")}
    assert used["template"] == {t for t, _ in TPL_TRAIN}, "a train template is unused"
    assert used["event"] == {e[0] for e in EV_TRAIN}, "a train event is unused"
    train_nouns = {n for pool in PROPER_NOUNS.values() for n in pool[0]}
    assert used["name"] - {None} == train_nouns, train_nouns - used["name"]
    train_places = {p for c in PLACES.values() for p, _ in c[0]}
    assert used["place"] - {None} == train_places, train_places - used["place"]

    # Held-out components must be absent from every train request.
    train_text = "\n".join(r for r, _, _ in train).casefold()
    heldout_nouns = [n for pool in PROPER_NOUNS.values() for n in pool[1]]
    for s in heldout_nouns + [p for c in PLACES.values() for p, _ in c[1]]:
        assert s.casefold() not in train_text, s
    for e in EV_EVAL:
        assert e[0].split(" {")[0].casefold() not in train_text, e
    train_tpls = {c["template"] for _, _, c in train}
    assert not train_tpls & {t for t, _ in TPL_EVAL}
    # Each held-out eval example has exactly one unseen component.
    for (req, ans, c), kind in zip(eval_out, [k for k in HELDOUT_KINDS for _ in range(N_EVAL_PER_HELDOUT)]):
        unseen = {
            "template": c["template"] in {t for t, _ in TPL_EVAL},
            "event": c["event"] in {e[0] for e in EV_EVAL},
            "name": c["name"] in {n for pool in PROPER_NOUNS.values() for n in pool[1]},
            "place": c["place"] is not None and c["place"] in {p for cat in PLACES.values() for p, _ in cat[1]},
        }
        assert [k for k, v in unseen.items() if v] == [kind], (req, unseen)
    for req, ans, c in eval_in:
        assert c["template"] in {t for t, _ in TPL_TRAIN} and c["event"] in {e[0] for e in EV_TRAIN}
        assert c["name"] is None or c["name"] in train_nouns
        assert c["place"] is None or c["place"] in {p for cat in PLACES.values() for p, _ in cat[0]}

    train_rows = [conversation(r, a) for r, a, _ in train]
    eval_rows = [conversation(r, a) for r, a, _ in eval_in + eval_out]
    return train_rows, eval_rows


def dump(rows):
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=None, help="default: examples/data next to this script's repo")
    ap.add_argument("--check", action="store_true", help="verify the files on disk instead of writing")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    out_dir = Path(args.out_dir) if args.out_dir else root / "examples" / "data"

    sample_path = root / "examples" / "data" / "calendar-sample.jsonl"
    sample_rows = [json.loads(l) for l in sample_path.read_text(encoding="utf-8").splitlines() if l.strip()]
    assert all(r["messages"][0]["content"] == SYSTEM for r in sample_rows), "system prompt drifted from the sample"
    sample_requests = [r["messages"][1]["content"] for r in sample_rows]

    train_rows, eval_rows = generate(sample_requests)
    assert len(train_rows) == N_TRAIN and len(eval_rows) == N_EVAL_IN + 4 * N_EVAL_PER_HELDOUT
    every = [json.dumps(r, ensure_ascii=False) for r in sample_rows + train_rows + eval_rows]
    assert len(set(every)) == len(every), "duplicate example"
    requests = [r["messages"][1]["content"] for r in sample_rows + train_rows + eval_rows]
    assert len({fold(q) for q in requests}) == len(requests), "duplicate request"

    outputs = {"calendar-train.jsonl": dump(train_rows), "calendar-eval.jsonl": dump(eval_rows)}
    if args.check:
        bad = [n for n, text in outputs.items()
               if not (out_dir / n).exists() or (out_dir / n).read_text(encoding="utf-8") != text]
        for n in bad:
            print(f"{out_dir / n}: differs from the generator's output", file=sys.stderr)
        sys.exit(1 if bad else 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    for n, text in outputs.items():
        tmp = out_dir / (n + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        tmp.replace(out_dir / n)
        rows = text.count("\n")
        print(f"wrote {out_dir / n}: {rows} examples, {len(text)} chars "
              f"({len(text) / rows:.0f} per line)")


if __name__ == "__main__":
    main()
