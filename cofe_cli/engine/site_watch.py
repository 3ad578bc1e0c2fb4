"""When an aggregator may stop serving although not every site was told to quit (pure: no OpenFL).

OpenFL's gRPC server serves until every collaborator of the plan has polled and been sent its quit
job, so one site that never comes back keeps the aggregator, and with it the federation, alive forever.
The aggregator asks this watch instead (every 5 s, from the server's loop) with what it knows: which
sites it heard from and when, which reported this round, and whether the last round is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A site that waits for the others polls the aggregator every second (n/10 s with n > 10 sites; OpenFL's
# own sleep time is 10 s); one silent for 30 s after the last round is not polling any more: the
# federation ends without its quit.
QUIT_GRACE_SECONDS = 30.0


@dataclass
class SitesLost:
    round: int  # 0-based
    reported: list[str]
    missing: list[str]
    needed: int
    waited_seconds: float
    silent_seconds: dict[str, float | None]  # None: never heard from by this aggregator

    def message(self) -> str:
        def silence(name: str) -> str:
            seconds = self.silent_seconds.get(name)
            return f"{name} (never connected)" if seconds is None else f"{name} (last heard from {seconds:.0f} s ago)"

        return (f"round {self.round + 1}: {len(self.reported)} of the {self.needed} site(s) it needs reported within "
                f"{self.waited_seconds:.0f} s; lost: {', '.join(silence(name) for name in self.missing)}")


@dataclass
class SiteWatch:
    """`needed` sites per round, `round_timeout` seconds (None: wait for every site forever, OpenFL's way)."""

    sites: list[str]
    needed: int
    round_timeout: float | None
    started: float
    last_contact: dict[str, float] = field(default_factory=dict)
    first_contact: float | None = None
    _round: int | None = None
    _round_opened: float = 0.0

    def heard_from(self, site: str, now: float) -> None:
        self.last_contact[site] = now
        if self.first_contact is None:
            self.first_contact = now

    def quit_not_needed(self, pending: list[str], now: float) -> list[str]:
        """Of the sites not yet told to quit after the last round, those that are not polling any more."""
        return [site for site in pending if now - self.last_contact.get(site, self.started) > QUIT_GRACE_SECONDS]

    def lost(self, round_number: int, reported: list[str], now: float) -> SitesLost | None:
        """A round that has not had `needed` reports for its deadline and then the same time again: the
        sites it waits for are lost (a live site reports or polls well within that)."""
        if round_number != self._round:
            self._round, self._round_opened = round_number, now
        if self.round_timeout is None or self.first_contact is None:  # no deadline; or no site came yet
            return None
        waited = now - max(self._round_opened, self.first_contact)
        if len(reported) >= self.needed or waited <= 2 * self.round_timeout:
            return None
        missing = [site for site in self.sites if site not in reported]
        return SitesLost(round=round_number, reported=list(reported), missing=missing, needed=self.needed,
                         waited_seconds=waited,
                         silent_seconds={site: (now - self.last_contact[site]) if site in self.last_contact else None
                                         for site in missing})
