"""fedshield over a real Flower deployment (SuperLink + SuperNodes, flwr's Message API).

- :mod:`.apps`: the Flower ``ServerApp`` (the server side of every round) and ``ClientApp``
  (a thin relay from the SuperNode to the site's own long-lived process);
- :mod:`.site`: that site process: data, model, trainer and the protocol's client session,
  which keep their state across stages and rounds (Flower starts one ClientApp process per
  message, so session state cannot live there);
- :mod:`.transport`: one protocol stage = one send-and-receive through Flower's grid;
- :mod:`.deadlines`: how long the server waits for the sites in each phase (``Deadlines``);
- :mod:`.deploy`: a whole deployment on loopback for ``fedshield run --transport flower``.
"""
