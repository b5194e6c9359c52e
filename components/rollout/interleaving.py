"""Team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008): one list from two rankings, credit by clicks.

Each round both teams pick their best item not yet shown, in an order a coin decides; a click
credits the team that placed the item. A shopper sees one normal list, and every session compares
the two rankers on the same query and the same shopper, which is why it needs far fewer sessions
than splitting users between the rankers (measured by `python -m bench.rollout`).

Pure: the coin flips are an argument (the service seeds them from the request id, the simulator
enumerates them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

CHAMPION_TEAM, CHALLENGER_TEAM = "champion", "challenger"


def team_draft(
    champion: Sequence[str], challenger: Sequence[str], k: int, coins: Iterable[bool]
) -> tuple[list[str], list[str]]:
    """(items, teams) of the interleaved list, at most k long; teams[i] names who placed items[i].

    coins: one flip per round in which both teams have picked equally often (True: the challenger
    picks first; ceil(k/2) flips are enough, missing ones count as False); a team whose list is used
    up lets the other pick. Items are ids; an item both lists hold is shown once, credited to the
    team that placed it.
    """
    flips = iter(coins)
    items: list[str] = []
    teams: list[str] = []
    shown: set[str] = set()
    sizes = {CHAMPION_TEAM: 0, CHALLENGER_TEAM: 0}
    pos = {CHAMPION_TEAM: 0, CHALLENGER_TEAM: 0}
    lists = {CHAMPION_TEAM: list(champion), CHALLENGER_TEAM: list(challenger)}

    def next_of(team: str) -> str | None:
        lst = lists[team]
        while pos[team] < len(lst) and lst[pos[team]] in shown:
            pos[team] += 1
        return lst[pos[team]] if pos[team] < len(lst) else None

    while len(items) < k and (next_of(CHAMPION_TEAM) is not None or next_of(CHALLENGER_TEAM) is not None):
        if sizes[CHALLENGER_TEAM] < sizes[CHAMPION_TEAM]:
            first = CHALLENGER_TEAM
        elif sizes[CHAMPION_TEAM] < sizes[CHALLENGER_TEAM]:
            first = CHAMPION_TEAM
        else:
            first = CHALLENGER_TEAM if next(flips, False) else CHAMPION_TEAM
        other = CHAMPION_TEAM if first == CHALLENGER_TEAM else CHALLENGER_TEAM
        team = first if next_of(first) is not None else other
        item = next_of(team)
        items.append(item)
        teams.append(team)
        shown.add(item)
        sizes[team] += 1
    return items, teams


def credit(teams: Sequence[str], clicked_ranks: Iterable[int]) -> int:
    """+1 when the challenger's items got more clicks, -1 when the champion's did, 0 for a tie or no click."""
    counts = {CHAMPION_TEAM: 0, CHALLENGER_TEAM: 0}
    for r in clicked_ranks:
        if 0 <= r < len(teams):
            counts[teams[r]] += 1
    return (counts[CHALLENGER_TEAM] > counts[CHAMPION_TEAM]) - (counts[CHALLENGER_TEAM] < counts[CHAMPION_TEAM])
