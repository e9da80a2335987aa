"""relax.lipschitz.bounds: certified *upper* bounds of the Clarke Jacobian and of its norms over a region.

Role: everything that bounds ``sup_x ||c^T J(x)||_q`` (or the Jacobian entries) from above, soundly,
for one region or a batch of them.  The searches (:mod:`..search`) call these as their bounding step;
the lower bounds (:mod:`..lower_bounds`) use the dense chain and backward graph.  Nothing here imports
``..search``, ``..lower_bounds`` or ``..api``.

Modules:

- ``gates``: Clarke-derivative gates, how each activation acts on the backward (gradient) signal;
- ``chain``: dense view of a chain network and the forward interval bounds (split neurons clamped);
- ``lifted``: residual piecewise-linear networks as a lifted chain;
- ``relaxations``: linear relaxations (chords) of gated products and ``|q|`` on the backward graph;
- ``backward``: CROWN / RecurJac / IBP on the backward (Clarke-Jacobian) graph of a chain;
- ``polytope``: forward pre-activation bounds over a domain's input polytope (Lagrangian dual);
- ``graph_jacobian``: Clarke-Jacobian bounds of general graph (residual) networks;
- ``implicit``: dense-free (layers applied as ops) interval bounds for convolutional chains;
- ``implicit_crown``: dense-free CROWN / RecurJac on the backward graph (ops, rows chunked in a byte budget);
- ``naive``: product of layer operator norms (global), also through residual graphs;
- ``lipsdp_local``: l2 local LipSDP-Neuron with per-neuron slope ranges;
- ``common``: the shared building blocks: certified rounding, input box, seeds, derivative ranges,
  backward-graph bounds of a chain.
"""
