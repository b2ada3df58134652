"""One process per site on this machine (`crosssite federate --processes`): no framework, no network, no Ray.

Each site's process builds its `SiteTrainer` once (it imports torch and decodes its own images once, reads
only its own folder, writes only OUT/SITE) and answers the coordinator's messages over a pipe until the
federation ends; the coordinator, in the calling process, sends each message to every site before it
waits for the replies, so the sites train side by side. Results equal the in-process federation's
(tests/federated/test_local.py).
"""

from __future__ import annotations

import multiprocessing

from ..errors import CrossSiteError
from .messages import EvaluateIns, EvaluateRes, FitIns, FitRes


def _serve(connection, trainer_args: tuple) -> None:
    """A site's process: its trainer, then one reply per (kind, instruction) until None arrives."""
    from .site import SiteTrainer

    try:
        trainer = SiteTrainer(*trainer_args)
        connection.send(("ok", trainer.name))
        while (request := connection.recv()) is not None:
            kind, ins = request
            connection.send(("ok", trainer.finish() if kind == "finish" else getattr(trainer, kind)(ins)))
    except Exception as e:  # noqa: BLE001 - the coordinator reports it as one line naming the site
        connection.send(("error", str(e) if isinstance(e, CrossSiteError) else f"{type(e).__name__}: {e}"))


class SiteProcesses:
    """The `Transport` of a federation with one process per site; `trainer_args`: per site, SiteTrainer's
    arguments. A context manager: leaving it ends the sites' processes."""

    def __init__(self, trainer_args: dict[str, tuple]):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads forked mid-use
        self.sites, self.pipes, self.processes = list(trainer_args), {}, {}
        for site, args in trainer_args.items():
            self.pipes[site], child = context.Pipe()
            self.processes[site] = context.Process(target=_serve, args=(child, args), name=f"crosssite-site-{site}")
            self.processes[site].start()
        for site in self.sites:  # each has built its trainer
            self._reply(site)

    def _reply(self, site: str):
        try:
            status, value = self.pipes[site].recv()
        except EOFError:
            raise CrossSiteError(f"site {site}: its process ended (exit code {self.processes[site].exitcode}); "
                                 "rerun with --resume") from None
        if status == "error":
            raise CrossSiteError(f"site {site}: {value}")
        return value

    def _ask(self, kind: str, instructions: dict) -> list:
        for site, ins in instructions.items():
            self.pipes[site].send((kind, ins))
        return [self._reply(site) for site in instructions]

    def fit(self, instructions: dict[str, FitIns]) -> list[FitRes]:
        return self._ask("fit", instructions)

    def evaluate(self, instructions: dict[str, EvaluateIns]) -> list[EvaluateRes]:
        return self._ask("evaluate", instructions)

    def finish(self, sites: list[str]) -> list[EvaluateRes]:
        return self._ask("finish", dict.fromkeys(sites))

    def close(self) -> None:
        for site, process in self.processes.items():
            if process.is_alive():
                try:
                    self.pipes[site].send(None)
                except (BrokenPipeError, OSError):
                    pass
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()

    def __enter__(self) -> SiteProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
