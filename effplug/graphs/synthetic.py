"""A synthetic labeled property graph whose vertex class is a known function of labels and properties, for
tests and the LPG2vec ablation (no graph database can be downloaded here).

Vertices look like a financial graph (the authors' example is FinCEN transactions): a primary label
(Person, Company, Bank), an optional ``Flagged`` label, and properties ``balance`` (log-normal over six
decades), ``age`` (missing for companies and banks, and for 10% of persons), ``country`` (one of 12 codes),
``name`` (free text) and ``rating`` (1-5). The class is the number of risk signals, capped at 2:

    risk = [Flagged in labels] + [balance > 1e5] + [country in HIGH_RISK]        class = min(risk, 2)

then ``label_noise`` of the classes are redrawn at random. Edges (TRANSFER with an ``amount``, OWNS, KNOWS)
are drawn with homophily: each edge joins two vertices of the same class with probability ``homophily``,
and higher classes have more edges, so structure alone carries some signal too.
"""

from __future__ import annotations

import torch

COUNTRIES = ("CH", "DE", "FR", "IT", "AT", "NL", "US", "GB", "PA", "KY", "VG", "CY")
HIGH_RISK = ("PA", "KY", "VG", "CY")
_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vos", "zu", "bel", "dor", "fin", "gra", "hul")


def synthetic_lpg(num_vertices: int = 600, seed: int = 0, homophily: float = 0.6, label_noise: float = 0.05,
                  edges_per_vertex: float = 3.0) -> tuple[list[dict], list[dict], torch.Tensor]:
    """``(vertex_rows, edge_rows, y)``: rows as :class:`~effplug.graphs.LPGEncoder` takes them, ``y`` int64."""
    if num_vertices < 10:
        raise ValueError(f"num_vertices={num_vertices}: use at least 10")
    if not 0.0 <= homophily <= 1.0 or not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"homophily={homophily}, label_noise={label_noise}: both are probabilities in [0, 1]")
    gen = torch.Generator().manual_seed(seed)

    def uniform(n=1):
        return torch.rand(n, generator=gen)

    vertices, classes = [], []
    for i in range(num_vertices):
        kind = ("Person", "Company", "Bank")[int(torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), 1, generator=gen))]
        flagged = bool(uniform() < 0.25)
        balance = float(10 ** (1 + 6 * uniform()))
        country = COUNTRIES[int(torch.randint(len(COUNTRIES), (1,), generator=gen))]
        age = int(18 + torch.randint(70, (1,), generator=gen)) if kind == "Person" and uniform() > 0.1 else None
        words = [_SYLLABLES[int(j)] for j in torch.randint(len(_SYLLABLES), (3,), generator=gen)]
        name = "".join(words[:2]).title() + (" " + words[2].title() + " AG" if kind != "Person" else "")
        risk = int(flagged) + int(balance > 1e5) + int(country in HIGH_RISK)
        label = min(risk, 2)
        if uniform() < label_noise:
            label = int(torch.randint(3, (1,), generator=gen))
        classes.append(label)
        vertices.append({"id": f"v{i}", "labels": [kind] + (["Flagged"] if flagged else []), "balance": balance,
                         "age": age, "country": country, "name": name,
                         "rating": int(1 + torch.randint(5, (1,), generator=gen))})
    y = torch.tensor(classes)
    by_class = [torch.nonzero(y == c).flatten() for c in range(3)]
    edges = []
    for i in range(num_vertices):
        degree = int(torch.poisson(torch.tensor([edges_per_vertex * (1 + 0.5 * classes[i])]), generator=gen))
        for _ in range(degree):
            pool = by_class[classes[i]] if uniform() < homophily and len(by_class[classes[i]]) > 1 else None
            j = int(pool[torch.randint(len(pool), (1,), generator=gen)]) if pool is not None else \
                int(torch.randint(num_vertices, (1,), generator=gen))
            if j == i:
                continue
            kind = ("TRANSFER", "OWNS", "KNOWS")[int(torch.randint(3, (1,), generator=gen))]
            edge = {"source": f"v{i}", "target": f"v{j}", "type": kind}
            if kind == "TRANSFER":
                edge["amount"] = float(10 ** (1 + 5 * uniform()))
            edges.append(edge)
    return vertices, edges, y
