"""Federated cross-site training: each site trains on its own images; only shared weights and aggregates travel.

No module here imports a federated-learning framework: `site` (one hospital's trainer), `coordinator` (rounds,
averaging, the federation log), `messages` (what travels), `state` (what stays), `contrast` (the federated
contrastive term) and `local` (every site in this process) make a whole federation; `flower` puts Flower's
transport over the same pieces (the optional [fed] extra). docs/federated.md says how to run it.
"""
