"""In-memory recipient search over communication parties (what an EPJ's recipient field needs).

Lookup order: an exact HER-id, then a 9-digit organisation number (the organisation first, then
its services and people), then free text. Free text is folded (see :mod:`normalise`) and every
query word must match a word of the party's name, display name or parent name, exactly, as a
prefix (the word being typed), or within a small edit distance (typos). Ranking: exact > prefix
> fuzzy, own name over parent name, fully matched short names over long ones; parties the
register has inactive come after all others (not the register's IsValidCommunicationParty, which
is false for every organisation).

Built for 100,000 parties: words go into an inverted index, a sorted vocabulary answers prefixes
by bisection, and a trigram index over the vocabulary finds typo candidates without scanning.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meldingstjener.registry.normalise import fold_word, tokens
from meldingstjener.registry.parties import CommunicationParty, PartyType

EXACT = 1.0
PREFIX = 0.8
FUZZY = (1.0, 0.6, 0.45)  # by edit distance 0, 1, 2
PARENT_WEIGHT = 0.7
UNUSABLE_PENALTY = 1.0  # more than any text score difference: usable parties first
HER_ID_SCORE = 100.0
ORGANISATION_NUMBER_SCORE = 90.0
# A two-letter prefix can match thousands of words; past this many, more words add noise, not
# hits the user is looking for (they type another letter).
PREFIX_WORD_LIMIT = 3000
MIN_PREFIX_LENGTH = 2
MIN_FUZZY_LENGTH = 4

_Filter = Callable[[CommunicationParty], bool]


@dataclass(frozen=True, slots=True)
class SearchHit:
    party: CommunicationParty
    score: float
    matched: str  # "her-id", "organisation-number" or "text"


class PartyIndex:
    """Searchable set of parties; add, update and remove keep every index consistent."""

    def __init__(self, parties: Iterable[CommunicationParty] = ()) -> None:
        self._parties: dict[str, CommunicationParty] = {}
        self._own_words: dict[str, tuple[str, ...]] = {}
        self._parent_words: dict[str, tuple[str, ...]] = {}
        # word -> HER-ids, separately for own names and parent names (they rank differently)
        self._postings: dict[bool, dict[str, set[str]]] = {False: {}, True: {}}
        # (word, in_parent) -> holders in static rank order, built on demand, dropped on change
        self._ranked: dict[tuple[str, bool], list[tuple[float, int, str, str]]] = {}
        self._static: dict[str, tuple[float, int, str, str]] = {}
        self._trigrams: dict[str, set[str]] = {}
        self._by_organisation_number: dict[str, set[str]] = {}
        self._vocabulary: list[str] = []
        self._vocabulary_sorted = True
        for party in parties:
            self._insert(party, keep_sorted=False)

    def __len__(self) -> int:
        return len(self._parties)

    def __contains__(self, her_id: object) -> bool:
        return str(her_id) in self._parties

    def get(self, her_id: str) -> CommunicationParty | None:
        return self._parties.get(str(her_id))

    def add(self, party: CommunicationParty) -> None:
        """Add ``party``, replacing an earlier entry with the same HER-id."""
        if party.her_id in self._parties:
            self.remove(party.her_id)
        self._insert(party, keep_sorted=True)

    update = add

    def remove(self, her_id: str) -> CommunicationParty | None:
        party = self._parties.pop(str(her_id), None)
        if party is None:
            return None
        del self._static[party.her_id]
        for in_parent, words in (
            (False, self._own_words.pop(party.her_id)),
            (True, self._parent_words.pop(party.her_id)),
        ):
            postings = self._postings[in_parent]
            for word in set(words):
                holders = postings.get(word)
                if holders is None:
                    continue
                holders.discard(party.her_id)
                self._ranked.pop((word, in_parent), None)
                if not holders:
                    del postings[word]
                    if word not in self._postings[not in_parent]:
                        self._forget_word(word)
        for number in _organisation_numbers(party):
            holders = self._by_organisation_number.get(number)
            if holders is not None:
                holders.discard(party.her_id)
                if not holders:
                    del self._by_organisation_number[number]
        return party

    # --- queries ---------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        party_type: PartyType | str | None = None,
        service_type: str | None = None,
        limit: int = 20,
    ) -> list[SearchHit]:
        """Best matches first. ``service_type`` matches a service code or its text."""
        wanted_type = PartyType(party_type) if party_type is not None else None
        wanted_service = fold_word(service_type.strip()) if service_type else None

        def accepted(party: CommunicationParty) -> bool:
            if wanted_type is not None and party.party_type is not wanted_type:
                return False
            if wanted_service is None:
                return True
            return any(
                fold_word(c.code) == wanted_service or fold_word(c.text or "") == wanted_service
                for c in party.service_types
            )

        if limit <= 0:
            return []
        hits = self._number_hits(query, accepted)
        words = tokens(query)
        if hits and all(w.isdigit() for w in words):
            return sorted(hits.values(), key=_rank)[:limit]
        for hit in self._text_hits(words, accepted, limit + len(hits)):
            hits.setdefault(hit.party.her_id, hit)
        return sorted(hits.values(), key=_rank)[:limit]

    def _number_hits(self, query: str, accepted: _Filter) -> dict[str, SearchHit]:
        digits = "".join(query.split())
        hits: dict[str, SearchHit] = {}
        if not digits.isdigit():
            return hits
        party = self._parties.get(digits.lstrip("0") or digits)
        if party is not None and accepted(party):
            hits[party.her_id] = SearchHit(party, HER_ID_SCORE, "her-id")
        for her_id in self._by_organisation_number.get(digits, ()):
            holder = self._parties[her_id]
            if her_id in hits or not accepted(holder):
                continue
            # The organisation itself before the services and people under it.
            own = holder.organisation_number == digits
            score = ORGANISATION_NUMBER_SCORE - (0 if own else 5) - _penalty(holder)
            hits[her_id] = SearchHit(holder, score, "organisation-number")
        return hits

    def _text_hits(self, words: tuple[str, ...], accepted: _Filter, limit: int) -> list[SearchHit]:
        if not words:
            return []
        matches = [self._word_matches(word) for word in words]
        if any(not m for m in matches):
            return []  # every query word must match something
        if len(matches) == 1:
            scored = self._single_word(matches[0], accepted, limit)
        else:
            scored = self._several_words(matches, accepted)
        best = heapq.nlargest(limit, scored, key=lambda item: (item[0], item[1]))
        return [SearchHit(self._parties[h], round(s, 4), "text") for s, h in best]

    def _several_words(
        self, matches: list[dict[str, float]], accepted: _Filter
    ) -> list[tuple[float, str]]:
        # Parties that match every query word, found with C-speed set operations first; only
        # those are scored in Python.
        holder_sets = []
        for word_matches in matches:
            holders: set[str] = set()
            for postings in self._postings.values():
                for word in word_matches:
                    holders.update(postings.get(word, ()))
            holder_sets.append(holders)
        holder_sets.sort(key=len)
        candidates = holder_sets[0].intersection(*holder_sets[1:])
        scored = []
        for her_id in candidates:
            party = self._parties[her_id]
            if accepted(party):
                scored.append((self._score(her_id, matches) - _penalty(party), her_id))
        return scored

    def _single_word(
        self, word_matches: dict[str, float], accepted: _Filter, limit: int
    ) -> list[tuple[float, str]]:
        """One query word can match tens of thousands of parties ("kommune"). Within one tier
        (same quality, same field) the score only depends on the static key, so each tier is
        read in key order and abandoned as soon as ``limit`` better hits are certain."""
        tiers: dict[tuple[float, bool], list[str]] = {}
        for word, quality in word_matches.items():
            for in_parent in (False, True):
                if word in self._postings[in_parent]:
                    weight = PARENT_WEIGHT if in_parent else 1.0
                    tiers.setdefault((quality * weight, in_parent), []).append(word)
        scored: dict[str, float] = {}
        for (quality, in_parent), tier_words in sorted(
            tiers.items(), key=lambda t: (-t[0][0], t[0][1])
        ):
            ceiling = quality + (0.0 if in_parent else 0.1)
            if len(scored) >= limit and sorted(scored.values(), reverse=True)[limit - 1] >= ceiling:
                break
            taken = 0
            ranked = heapq.merge(*(self._ranked_holders(w, in_parent) for w in tier_words))
            for penalty, own_count, _name, her_id in ranked:
                if her_id in scored or not accepted(self._parties[her_id]):
                    continue
                coverage = 0.0 if in_parent else 0.1 / own_count
                scored[her_id] = quality + coverage - penalty
                taken += 1
                if taken >= limit:
                    break
        return [(score, her_id) for her_id, score in scored.items()]

    def _ranked_holders(self, word: str, in_parent: bool) -> list[tuple[float, int, str, str]]:
        key = (word, in_parent)
        ranked = self._ranked.get(key)
        if ranked is None:
            ranked = sorted(self._static[h] for h in self._postings[in_parent][word])
            self._ranked[key] = ranked
        return ranked

    def _score(self, her_id: str, matches: list[dict[str, float]]) -> float:
        own = self._own_words[her_id]
        parent = self._parent_words[her_id]
        total = 0.0
        matched_own: set[str] = set()
        for word_matches in matches:
            best = 0.0
            best_own: str | None = None
            for word in own:
                quality = word_matches.get(word, 0.0)
                if quality > best:
                    best, best_own = quality, word
            for word in parent:
                quality = word_matches.get(word, 0.0) * PARENT_WEIGHT
                if quality > best:
                    best, best_own = quality, None
            if best == 0.0:
                return 0.0
            total += best
            if best_own is not None:
                matched_own.add(best_own)
        # Small bonus for covering the whole name: "Legevakt" beats "Legevakt og KAD-senter".
        coverage = len(matched_own) / len(set(own)) if own else 0.0
        return total / len(matches) + 0.1 * coverage

    def _word_matches(self, word: str) -> dict[str, float]:
        found: dict[str, float] = {}
        if self._known(word):
            found[word] = EXACT
        if len(word) >= MIN_PREFIX_LENGTH:
            vocabulary = self._sorted_vocabulary()
            start = bisect.bisect_left(vocabulary, word)
            for candidate in vocabulary[start : start + PREFIX_WORD_LIMIT]:
                if not candidate.startswith(word):
                    break
                found.setdefault(candidate, PREFIX)
        if len(word) >= MIN_FUZZY_LENGTH:
            for candidate, distance in self._near_words(word):
                if FUZZY[distance] > found.get(candidate, 0.0):
                    found[candidate] = FUZZY[distance]
        return found

    def _known(self, word: str) -> bool:
        return word in self._postings[False] or word in self._postings[True]

    def _near_words(self, word: str) -> list[tuple[str, int]]:
        max_distance = 1 if len(word) <= 7 else 2
        grams = _trigrams(word)
        counts: Counter[str] = Counter()
        for gram in grams:
            counts.update(self._trigrams.get(gram, ()))
        # An edit changes at most 3 padded trigrams, an adjacent swap at most 4 (q-gram lemma).
        needed = max(1, len(grams) - 4 * max_distance)
        near = []
        for candidate, shared in counts.items():
            if shared < needed or abs(len(candidate) - len(word)) > max_distance:
                continue
            distance = bounded_edit_distance(word, candidate, max_distance)
            if distance is not None:
                near.append((candidate, distance))
        return near

    # --- index maintenance -----------------------------------------------------------------

    def _insert(self, party: CommunicationParty, *, keep_sorted: bool) -> None:
        her_id = party.her_id
        self._parties[her_id] = party
        name_words = tokens(party.name)
        own = name_words + tuple(w for w in tokens(party.display_name) if w not in name_words)
        parent = tokens(party.parent_name)
        self._own_words[her_id] = own
        self._parent_words[her_id] = parent
        self._static[her_id] = (
            _penalty(party),
            max(1, len(set(own))),
            party.name.casefold(),
            her_id,
        )
        for in_parent, words in ((False, own), (True, parent)):
            postings = self._postings[in_parent]
            for word in set(words):
                if not self._known(word):
                    self._learn_word(word, keep_sorted=keep_sorted)
                postings.setdefault(word, set()).add(her_id)
                self._ranked.pop((word, in_parent), None)
        for number in _organisation_numbers(party):
            self._by_organisation_number.setdefault(number, set()).add(her_id)

    def _learn_word(self, word: str, *, keep_sorted: bool) -> None:
        for gram in _trigrams(word):
            self._trigrams.setdefault(gram, set()).add(word)
        if keep_sorted and self._vocabulary_sorted:
            bisect.insort(self._vocabulary, word)
        else:
            self._vocabulary.append(word)
            self._vocabulary_sorted = False

    def _forget_word(self, word: str) -> None:
        for gram in _trigrams(word):
            holders = self._trigrams.get(gram)
            if holders is not None:
                holders.discard(word)
                if not holders:
                    del self._trigrams[gram]
        if self._vocabulary_sorted:
            position = bisect.bisect_left(self._vocabulary, word)
            if position < len(self._vocabulary) and self._vocabulary[position] == word:
                del self._vocabulary[position]
        else:
            self._vocabulary.remove(word)

    def _sorted_vocabulary(self) -> list[str]:
        if not self._vocabulary_sorted:
            self._vocabulary.sort()
            self._vocabulary_sorted = True
        return self._vocabulary


def _rank(hit: SearchHit) -> tuple[float, str, str]:
    return (-hit.score, hit.party.name, hit.party.her_id)


def _penalty(party: CommunicationParty) -> float:
    return 0.0 if party.active else UNUSABLE_PENALTY


def _organisation_numbers(party: CommunicationParty) -> set[str]:
    return {n for n in (party.organisation_number, party.parent_organisation_number) if n}


def _trigrams(word: str) -> set[str]:
    padded = f"$${word}$$"
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def bounded_edit_distance(a: str, b: str, limit: int) -> int | None:
    """Optimal-string-alignment distance (edits + adjacent swaps) if it is <= ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return None
    previous_previous: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        row_best = current[0]
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                value = min(value, previous_previous[j - 2] + 1)
            current[j] = value
            row_best = min(row_best, value)
        if row_best > limit:
            return None
        previous_previous, previous = previous, current
    distance = previous[len(b)]
    return distance if distance <= limit else None
