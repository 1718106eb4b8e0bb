"""The names and marks that the compiler (:mod:`gateway.graphql.compile`) puts in a statement and
the policy rewrite (:mod:`policies.rewrite`) reads: made here, and recognised here, so that
neither re-derives the other's conventions.

A compiled statement returns, for each node of the response, its outputs (``o<node>_<i>``) and
the columns that tie its rows together (``__node``, ``__parent``, ``__id``). Inside it, rows
carry hidden values that never leave the engine: a relationship's key (``__k<n>``), sort and
distinct-on values (``__s<n>``, ``__d<n>``), and what a policy subquery passes on: a raw key
(``__key_<column>``), a tie-break (``__tie_<column>``) or a raw value whose mask is computed
later (``__raw_<column>``).

>>> output(2, 0), is_output("o2_0"), is_output("o2_x")
('o2_0', True, False)
>>> [is_hidden(n) for n in (node_key(0), sort(1), hidden(KEY, "id_card"), "o1_1", hidden(RAW_VALUE, "name"))]
[True, True, True, False, False]
"""

from __future__ import annotations

# Marks, in a node's ``meta``: on a column, under MARK, what the compiler reads it for.
MARK = "citygate"
KEY = "key"  # a column the compiler joins on (a relationship's key)
TIE = "tie"  # a column the compiler orders by only to break ties
AGGREGATED = "aggregates"  # on a SELECT whose output is aggregated
RAW_VALUE = "raw"  # what a policy subquery passes on raw, for a mask computed outside it
ENTITY = "entity"  # what an aggregate-only table's policy subquery passes on for k to count (a digest)
SELECTS = "selects"  # on the COUNT that decides which groups of a noisy table appear

# The columns of every arm of a statement's UNION besides its outputs.
NODE, PARENT, ID = "__node", "__parent", "__id"
ARM = frozenset({NODE, PARENT, ID})
ROW_NUMBER, FIRST, ONE, ROW = "__rn", "__first", "__one", "__row"

# A relationship followed by key between stores (gateway.graphql.parts): the parent's statement
# returns each parent's raw key under a link's name (``__link<n>``), for the gateway to join on
# and never to shape; the child's statement reads the keys it is given from ``__keys``, one
# bound parameter, as rows of the key (``__value``) and its place in the list (``__place``,
# from 1), which its rows return as their parent's.
KEYS, KEY_VALUE, KEY_PLACE = "__keys", "__value", "__place"


def link(index: int) -> str:
    """The ``index``-th raw key a statement returns for the gateway to join another store's rows on."""
    return f"__link{index}"


def is_link(name: str) -> bool:
    """Whether ``name`` is a link (:func:`link`).

    >>> is_link(link(0)), is_link("__link"), is_link("o1_0")
    (True, False, False)
    """
    return _numbered(name, "__link")


def output(node: int, index: int) -> str:
    """The ``index``-th output of response node ``node``."""
    return f"o{node}_{index}"


def node_key(index: int) -> str:
    """A relationship key a node's rows carry for its children to join on."""
    return f"__k{index}"


def sort(index: int) -> str:
    """A sort value a node's rows carry until their page is cut."""
    return f"__s{index}"


def distinct(index: int) -> str:
    """A `distinct_on` value a node's rows carry until they are deduplicated."""
    return f"__d{index}"


def hidden(mark: str, column: str) -> str:
    """What a policy subquery passes ``column`` on as: ``__key_c``, ``__tie_c``, ``__raw_c``."""
    return f"__{mark}_{column}"


def _numbered(name: str, prefix: str) -> bool:
    rest = name[len(prefix) :]
    return name.startswith(prefix) and rest.isdecimal()


def is_output(name: str) -> bool:
    """Whether ``name`` is a node's output (:func:`output`)."""
    head, sep, tail = name[1:].partition("_")
    return name.startswith("o") and bool(sep) and head.isdecimal() and tail.isdecimal()


def is_raw(name: str) -> bool:
    """Whether ``name`` is a raw value passed on for a later mask (case aside, as engines compare)."""
    return name.lower().startswith(hidden(RAW_VALUE, ""))


def is_join_key(name: str) -> bool:
    """Whether ``name`` is a raw key: a relationship's, or a node's (they link records only)."""
    return name.startswith(hidden(KEY, "")) or _numbered(name, "__k")


def is_tie(name: str) -> bool:
    """Whether ``name`` is what a tie-break passes on as: a policy's digest or a sort value."""
    return name.startswith(hidden(TIE, "")) or _numbered(name, "__s")


def is_hidden(name: str) -> bool:
    """Whether ``name`` is a key, a tie-break, a sort or a distinct-on value: never an output."""
    return is_join_key(name) or is_tie(name) or _numbered(name, "__d")
