"""The checks of `cofe doctor`, one module per family: network_tls (address, port, tls), grpc_ping
(aggregator), certificates (certificate, keys, clock), data, plan_and_versions (plan, model,
environment); result holds a check's outcome, runner their order. The command itself is
cofe_cli/commands/doctor.py. Nothing here imports OpenFL or torch: the Ping loads OpenFL when it runs.

What each check really verifies, and what it cannot:

- plan: plans/plan.yaml hashes to the federation's plan SHA-384 (federation.yaml) and the workspace's
  plan/ is that plan. It cannot tell whether the aggregator runs the same plan; `aggregator` can.
- address: the plan's aggregator address resolves here (an IP needs no DNS).
- port: a TCP connection to it opens within --timeout (something listens, no firewall drops it).
  It does not say what listens: `tls` does.
- tls: a TLS handshake (ALPN h2, as gRPC) with this site's certificate: the server's certificate
  chains to this federation's CA and names the address dialled, and the server does not refuse this
  site's certificate (the HTTP/2 preface is sent and answered). Python's TLS stack, not gRPC's.
- aggregator: a real gRPC Ping as OpenFL's collaborator makes it (header from OpenFL's Plan.parse of
  this workspace). The aggregator itself checks the certificate, the name, the plan's UUIDs and
  cofe's CRL; it changes nothing there. Only for collaborators: the aggregator pings nobody.
- certificate: this participant's certificate is here, matches its key, chains to the federation's
  CA, carries its name (the aggregator's: the plan address), is valid already and for --min-days more.
- keys: no private key here (this participant's, any other's in a federation directory, the CA's and
  its ca/private folder) is open to group or others; the fix is the chmod.
- clock: the aggregator's clock cannot be read through OpenFL's protocol (no time in its messages).
  What is compared, with the coordinator's clock at the time it made them: the aggregator's
  certificate (presented in the handshake), this site's certificate and kit.json's export time. A
  timestamp more than a minute in this machine's future means this clock is behind. A clock that is
  ahead cannot be seen this way; the kernel's NTP state (Linux) is shown as well.
- model (aggregator): the initial model its plan loads (save/init.pbuf) has the SHA-384 federation.yaml
  records, which the federation fingerprint read back at import covers.
- data: collaborators' train.csv/valid.csv load as `cofe start` checks them (columns, channels, files).
- environment: cofe, openfl, gandlf and torch here are the versions the plan recorded (federation.yaml).
"""
