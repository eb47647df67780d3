"""
The interfaces of lbproxy: what each part promises the others.

Read this module first.  A connection's path is: a relay engine accepts it
and starts an L{IConnectionSession}, which makes every decision (admission,
routing and retries through the L{IBalancer}, the PROXY header, outcomes);
the engine connects, relays bytes and reports what happened to the session.  A config change's path is: the admin API validates it into a
new L{lbproxy.model.config.Config}, an L{IConfigStore} makes it durable, and the
balancer swaps it in.
"""

from zope.interface import Attribute, Interface


class IStrategy(Interface):
    """
    A load-balancing policy: picks one backend for a new client connection.

    A strategy does no I/O.  It is called on the reactor thread for every
    accepted connection, so it must be cheap and must never block.
    """

    name = Attribute("The name of the plugin that built this strategy.")

    def choose(candidates, client):
        """
        Pick a backend for C{client}.

        @param candidates: a non-empty tuple of L{lbproxy.policy.pool.Candidate}, each
            with C{.id}, C{.host}, C{.port}, C{.weight} (the effective
            weight, which slow start may lower) and C{.stats} (live counters:
            C{active}, C{total}, C{failures}, C{connect_ewma},
            C{response_ewma}).  The same tuple object is passed again until
            the pool or its health changes, so a strategy may cache work
            keyed on it.
        @param client: the client's C{(host, port)}.

        @return: one element of C{candidates}.
        """


class IStrategyFactory(Interface):
    """
    A strategy plugin, found by L{twisted.plugin.getPlugins}.

    Third parties provide one by dropping a module into a C{twisted/plugins/}
    directory on C{sys.path}; the module binds an object providing both this
    interface and L{twisted.plugin.IPlugin}.
    """

    name = Attribute("Unique name used on the command line and the API.")
    description = Attribute("One line saying what the strategy does.")
    options_schema = Attribute("A JSON Schema (dict) for the options object.")

    def build(options):
        """
        Make a strategy.

        @param options: a dict already valid against C{options_schema}.
        @return: an L{IStrategy} provider.
        @raise ValueError: for options the schema cannot express as invalid.
        """


class IBalancer(Interface):
    """
    The policy core that every connection's L{IConnectionSession} calls
    (and nothing else on the connection path).

    It owns the current config snapshot, the active strategy, per-backend
    counters and the routing event ring.  All calls happen on the reactor
    thread.
    """

    settings = Attribute("The L{lbproxy.model.config.ProxySettings} in force.")

    def admit():
        """
        @return: C{True} if one more client connection may be accepted; a
            refusal is counted.
        """

    def route(client, exclude):
        """
        Choose a backend for a client connection.

        @param client: the client's C{(host, port)}.
        @param exclude: ids of backends already tried for this connection.
        @return: a L{lbproxy.policy.pool.Candidate} or C{None} if no backend is
            available.
        """

    def retried():
        """
        A failed connect is tried again on another backend (counted).
        """

    def connection_opened(candidate, connection, latency):
        """
        A backend connection is up.

        @param connection: an L{IRelayedConnection}, so that a forced removal
            can close it.
        @param latency: seconds the connect took.
        """

    def connect_failed(candidate, reason):
        """
        A backend connection attempt failed (refused, timed out, ...).
        """

    def connection_reset(candidate, reason):
        """
        An established backend connection was reset by the backend (not by
        lbproxy or the client); passive health checking counts it like a
        failed connect.
        """

    def observe_response(candidate, seconds):
        """
        The backend's first response byte came C{seconds} after the connect
        (least-response-time uses it).
        """

    def connection_closed(candidate, connection, record):
        """
        A relayed connection ended.

        @param record: an L{lbproxy.policy.pool.AccessRecord} for the access log.
        """

    def client_failed(record):
        """
        A client connection ended without ever reaching a backend.
        """


class IRelayedConnection(Interface):
    """
    One client connection relayed to one backend, as the balancer sees it.
    The engine counts bytes on the connection itself (one integer add per
    chunk); the balancer reads the counters when it needs them.
    """

    bytes_up = Attribute("Bytes relayed from the client to the backend.")
    bytes_down = Attribute("Bytes relayed from the backend to the client.")
    idle_mark = Attribute(
        "Balancer-owned: byte count at the last idle sweep; -1 once closed."
    )
    idle_since = Attribute("Balancer-owned: when the byte count last moved.")

    def abort(why):
        """
        Reset both sides now (forced removal, drain timeout).

        @param why: the outcome to record in the access log.
        """

    def close(why):
        """
        Close both sides cleanly (FIN, not RST): the idle timeout, where no
        byte is in flight.

        @param why: the outcome to record in the access log.
        """


class IEngineConnection(IRelayedConnection):
    """
    A relay engine's connection as its session sees it: what the balancer
    sees, plus what only the engine can tell.
    """

    def local_address():
        """
        @return: the C{(host, port)} the client connected to; asked only
            when a backend wants a PROXY header (it may cost a syscall).
        """


class IConnectionSession(Interface):
    """
    Every per-connection decision, with no I/O: one per accepted client.

    The engine reports events; the answers are its actions.  A method that
    answers a L{lbproxy.policy.pool.Candidate} means "connect to it"
    (within C{connect_timeout}); one that answers C{None} means "close the
    client": the session has then already reported the end, and the
    engine's later L{ended} is a no-op.  Every method runs on the reactor
    thread; the fast engine calls them on its hot path.
    """

    client = Attribute("The client's C{(host, port)}.")
    connect_timeout = Attribute("Seconds a backend connect may take.")
    outcome = Attribute(
        "What ended or is ending the connection (C{None} while nothing has): "
        "the first cause wins."
    )
    finished = Attribute("Whether the end was reported to the balancer.")

    def accepted():
        """
        The client is accepted: admit it (connection limit) and route it.

        @return: the first backend to connect to, or C{None}: close the
            client (C{rejected}: over the limit; C{no-backend}); or, only
            when the listener's L{IListenerRoute} needs the client's first
            bytes, a L{lbproxy.relay.session.ReadFirst}: read up to its
            C{limit} bytes and hand them to L{client_bytes}, and call
            L{read_timed_out} at its C{deadline}; or, when every backend
            is at its max_connections and the service has a queue, a
            L{lbproxy.relay.session.Wait}: keep the client unread and set
            its C{notify}, which the session calls once with the backend
            to connect to or C{None} (close the client).
        """

    def client_bytes(data):
        """
        The client's next bytes while a C{ReadFirst} is in force (C{b""}:
        it closed).  They are kept and replayed to the backend.

        @return: another C{ReadFirst}, the backend to connect to, or
            C{None}: close the client (counted by L{IListenerRoute.refused}).
        """

    def read_timed_out():
        """
        The C{ReadFirst} deadline passed with no decision.

        @return: C{None}: close the client.
        """

    def connecting():
        """
        The connect to the current backend starts only now (after a name
        lookup): its latency is counted from here.
        """

    def connected(connection):
        """
        The backend connect succeeded.

        @param connection: the engine's L{IEngineConnection}, which the
            balancer may then abort or close.
        @return: bytes to send the backend before any relayed byte (the
            PROXY header) or C{None}; then the engine starts relaying.
        """

    def connect_failed(reason):
        """
        The backend connect failed (refused, timed out, unresolvable).

        @return: the next backend to try (tried ones are excluded), a
            L{lbproxy.relay.session.Wait} (as from L{accepted}), or
            C{None}: close the client (C{connect-failed}).
        """

    def first_response():
        """
        The backend's first byte came (the engine reports the first only).
        """

    def client_reset():
        """
        The client side failed (reset, write error).
        """

    def backend_reset(reason):
        """
        The backend side failed; passive health counts it unless lbproxy
        or the client caused it.
        """

    def closing(why):
        """
        lbproxy is closing or aborting the connection (forced removal,
        drain or idle timeout, shutdown): C{why} is the outcome unless one
        came first, and resets that follow are not the peers' fault.
        """

    def ended(bytes_up, bytes_down):
        """
        Both sides are closed: report the access record (once).

        @return: the L{lbproxy.policy.pool.AccessRecord}, or C{None} if the
            end was already reported.
        """


class IListenerRoute(Interface):
    """
    What one listening endpoint knows of the services bound to it: an
    immutable snapshot, swapped whole on the engine when the config
    document changes (so a connection sees one route from accept to end).

    An ordinary listener carries one service and never waits for client
    bytes (server-speaks-first protocols keep working).  A listener shared
    by several services tells them apart by the TLS server name (SNI), so
    the session must read the ClientHello first; a listener whose services
    accept the PROXY protocol reads its header first from trusted sources.
    """

    endpoint = Attribute("The listen endpoint description, e.g. C{tcp:5432:interface=127.0.0.1}.")
    routes_by_sni = Attribute(
        "Whether the session must read the TLS ClientHello (at most 16 KiB) "
        "before a service can be chosen."
    )
    sni_timeout = Attribute("Seconds the session waits for a whole ClientHello.")
    accept_proxy = Attribute(
        "A tuple of L{ipaddress.ip_network} from which connections must start "
        "with a PROXY protocol v1/v2 header; empty: never read one."
    )

    def default():
        """
        @return: the L{IBalancer} for a connection that needs no choice (an
            ordinary listener's one service) or has no usable server name
            (the C{sni_default} service), or C{None}: close it.
        """

    def for_server_name(name):
        """
        @param name: the SNI host name, lower case, no trailing dot.
        @return: the L{IBalancer} of the service it selects (exact name,
            then the longest matching wildcard C{*.example.com}), or
            C{None} if none matches (then L{default} applies).
        """

    def refused(reason):
        """
        Count a connection closed before any service was chosen.

        @param reason: C{sni-timeout}, C{not-tls}, C{no-sni}, C{no-match},
            C{proxy-untrusted}, C{proxy-malformed}, C{proxy-timeout}, ...
        """


class IConfigObserver(Interface):
    """
    A part of the running process that must follow the config document:
    health checking, the worker pool, cluster code, the admin feed.

    This is the control plane's one way of saying "the document changed";
    nothing follows config changes by filtering the UI's event feed.
    """

    def applied(old, new):
        """
        A new config document is in force (it is durable and the balancer
        has swapped it in).  Called on the reactor thread, in the order the
        versions were applied; an observer that raises is logged and does
        not stop the others.

        @param old: the L{lbproxy.model.service.Document} before.
        @param new: the L{lbproxy.model.service.Document} now in force
            (its services are L{lbproxy.model.config.Config} values).
        """


class IConfigStore(Interface):
    """
    Durable storage for the one config document.
    """

    def load():
        """
        @return: a Deferred firing with the stored L{lbproxy.model.service.Document}
            (a store written by the first release, of one pool, loads as
            its one service C{default}), or C{None} if the store is empty.
        """

    def save(config, expected_version):
        """
        Store C{config} if the stored version is still C{expected_version}.

        @return: a Deferred that fires once the write is durable, or fails
            with L{lbproxy.model.errors.VersionConflict} or
            L{lbproxy.model.errors.StoreError}.
        """

    def watch(callback):
        """
        Call C{callback(config)} for every change made by someone else (a
        different node or worker).

        @return: a callable that stops the watch.
        """
