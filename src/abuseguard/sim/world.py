"""A synthetic network world: ASNs, prefixes, countries and anonymizer flags.

The networks carry real AS numbers and organisation names of well-known residential
ISPs, mobile carriers, universities, clouds, VPN and Tor hosts, with prefixes that are
plausible for them; the assignment of addresses inside is synthetic. Every address the
simulator hands out is registered here, so one address always carries the same
enrichment (ASN, organisation, country, anonymizer flags and confidence) wherever it
appears in the trace, and the same world can be written as mmdb files.

Anonymizer flags follow what commercial databases report: hosting networks are flagged
``hosting`` as a whole; VPN and Tor exits per address with a confidence; residential
proxies are flagged per address on residential and mobile networks, only for a share of
the addresses a proxy network really uses (coverage is never complete), and a few
addresses of ordinary users are flagged too (a device on their network once ran
proxyware, or a mobile proxy shares their carrier-grade NAT).
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass, field

from abuseguard.traces import trace_fields

# Network kinds.
RESIDENTIAL = "residential"
MOBILE = "mobile"
EDUCATION = "education"
HOSTING = "hosting"
VPN = "vpn"
CORPORATE = "corporate"
TOR = "tor"


@dataclass(frozen=True, slots=True)
class Network:
    """One autonomous system of the world and the prefixes it announces."""

    asn: int
    org: str
    kind: str
    country: str
    v4: tuple[str, ...]
    v6: tuple[str, ...] = ()
    weight: float = 1.0

    @property
    def anon(self) -> tuple[str, ...]:
        return ("hosting",) if self.kind == HOSTING else ()


# (asn, org, kind, country, v4 prefixes, v6 prefixes, weight for picking within its kind)
_NETWORKS: tuple[Network, ...] = (
    # Residential ISPs.
    Network(7922, "Comcast Cable Communications, LLC", RESIDENTIAL, "US",
            ("73.0.0.0/8", "98.192.0.0/10"), ("2601::/20",), 6.0),
    Network(7018, "AT&T Services, Inc.", RESIDENTIAL, "US",
            ("99.0.0.0/10", "107.192.0.0/10"), ("2600:1700::/28",), 4.0),
    Network(20115, "Charter Communications", RESIDENTIAL, "US",
            ("71.80.0.0/12", "24.176.0.0/12"), ("2600:6c00::/24",), 4.0),
    Network(701, "Verizon Business", RESIDENTIAL, "US", ("108.0.0.0/11",), ("2600:4040::/28",),
            3.0),
    Network(812, "Rogers Communications Canada Inc.", RESIDENTIAL, "CA", ("99.224.0.0/11",), (),
            1.5),
    Network(3320, "Deutsche Telekom AG", RESIDENTIAL, "DE", ("79.192.0.0/10", "87.128.0.0/10"),
            ("2003::/19",), 3.0),
    Network(3215, "Orange S.A.", RESIDENTIAL, "FR", ("90.0.0.0/9",), ("2a01:c000::/19",), 2.5),
    Network(2856, "British Telecommunications PLC", RESIDENTIAL, "GB", ("86.128.0.0/10",),
            ("2a00:23c0::/27",), 2.5),
    Network(3352, "TELEFONICA DE ESPANA S.A.U.", RESIDENTIAL, "ES", ("83.32.0.0/11",), (), 1.5),
    Network(3269, "Telecom Italia S.p.A.", RESIDENTIAL, "IT", ("79.16.0.0/12",), (), 1.5),
    Network(6830, "Liberty Global B.V.", RESIDENTIAL, "NL", ("84.24.0.0/13",), (), 1.0),
    Network(5432, "Proximus NV", RESIDENTIAL, "BE", ("81.240.0.0/12",), (), 0.5),
    Network(1221, "Telstra Limited", RESIDENTIAL, "AU", ("1.128.0.0/11",), (), 1.0),
    Network(4713, "NTT Communications Corporation", RESIDENTIAL, "JP", ("153.128.0.0/9",), (), 1.5),
    Network(4766, "Korea Telecom", RESIDENTIAL, "KR", ("121.128.0.0/10",), (), 1.0),
    Network(9498, "Bharti Airtel Ltd.", RESIDENTIAL, "IN", ("122.160.0.0/12",), (), 2.0),
    Network(4134, "Chinanet", RESIDENTIAL, "CN", ("113.64.0.0/10",), (), 1.0),
    Network(26599, "TELEFONICA BRASIL S.A", RESIDENTIAL, "BR", ("177.32.0.0/11",), (), 2.0),
    Network(8151, "UNINET", RESIDENTIAL, "MX", ("187.128.0.0/10",), (), 1.5),
    Network(7552, "Viettel Group", RESIDENTIAL, "VN", ("27.64.0.0/12",), (), 1.5),
    Network(45899, "VNPT Corp", RESIDENTIAL, "VN", ("113.160.0.0/11",), (), 1.0),
    Network(7713, "PT Telekomunikasi Indonesia", RESIDENTIAL, "ID", ("36.64.0.0/11",), (), 1.5),
    Network(9299, "Philippine Long Distance Telephone Company", RESIDENTIAL, "PH",
            ("112.198.0.0/15",), (), 1.0),
    Network(9121, "Turk Telekom", RESIDENTIAL, "TR", ("78.160.0.0/11",), (), 1.0),
    Network(12389, "PJSC Rostelecom", RESIDENTIAL, "RU", ("95.24.0.0/13",), (), 1.0),
    Network(8452, "TE Data", RESIDENTIAL, "EG", ("41.32.0.0/12",), (), 1.0),
    Network(36947, "Telecom Algeria", RESIDENTIAL, "DZ", ("41.96.0.0/12",), (), 0.5),
    Network(8048, "CANTV Servicios, Venezuela", RESIDENTIAL, "VE", ("186.88.0.0/13",), (), 0.5),
    Network(7303, "Telecom Argentina S.A.", RESIDENTIAL, "AR", ("181.0.0.0/12",), (), 0.8),
    Network(17552, "True Online", RESIDENTIAL, "TH", ("171.96.0.0/13",), (), 0.8),
    Network(17557, "Pakistan Telecommunication Company Limited", RESIDENTIAL, "PK",
            ("39.32.0.0/11",), (), 0.8),
    Network(5617, "Orange Polska Spolka Akcyjna", RESIDENTIAL, "PL", ("83.0.0.0/11",), (), 0.8),
    Network(6849, "JSC Ukrtelecom", RESIDENTIAL, "UA", ("176.36.0.0/14",), (), 0.5),
    Network(36903, "Maroc Telecom", RESIDENTIAL, "MA", ("105.128.0.0/11",), (), 0.4),
    Network(24863, "LINKdotNET", RESIDENTIAL, "EG", ("197.32.0.0/12",), (), 0.3),
    # Mobile carriers (IPv4 behind carrier-grade NAT pools; IPv6 per device).
    Network(21928, "T-Mobile USA, Inc.", MOBILE, "US", ("172.56.0.0/13",), ("2607:fb90::/28",),
            3.0),
    Network(22394, "Verizon Wireless", MOBILE, "US", ("174.192.0.0/10",), ("2600:1000::/28",), 3.0),
    Network(20057, "AT&T Mobility LLC", MOBILE, "US", ("166.128.0.0/10",), ("2600:380::/28",), 2.0),
    Network(3209, "Vodafone GmbH", MOBILE, "DE", ("188.96.0.0/12",), ("2a02:3030::/28",), 1.0),
    Network(12576, "EE Limited", MOBILE, "GB", ("31.94.0.0/16",), ("2a01:4c8::/32",), 1.0),
    Network(55836, "Reliance Jio Infocomm Limited", MOBILE, "IN", ("49.32.0.0/11",),
            ("2409:4000::/22",), 1.5),
    Network(26615, "TIM S/A", MOBILE, "BR", ("191.32.0.0/11",), (), 1.0),
    # Universities.
    Network(25, "University of California at Berkeley", EDUCATION, "US", ("128.32.0.0/16",),
            ("2607:f140::/32",)),
    Network(32, "Stanford University", EDUCATION, "US", ("171.64.0.0/14",), ("2607:f6d0::/32",)),
    Network(559, "SWITCH", EDUCATION, "CH", ("129.132.0.0/16",), ("2001:620::/29",)),
    Network(239, "University of Toronto", EDUCATION, "CA", ("128.100.0.0/16",), ()),
    Network(786, "Jisc Services Limited", EDUCATION, "GB", ("131.111.0.0/16",), ("2001:630::/32",)),
    # Hosting and clouds.
    Network(16509, "Amazon.com, Inc.", HOSTING, "US", ("3.80.0.0/12", "52.0.0.0/11"),
            ("2600:1f18::/33",), 5.0),
    Network(14618, "Amazon.com, Inc.", HOSTING, "US", ("54.80.0.0/12",), (), 2.0),
    Network(396982, "Google LLC", HOSTING, "US", ("34.64.0.0/10", "35.184.0.0/13"),
            ("2600:1900::/28",), 3.0),
    Network(8075, "Microsoft Corporation", HOSTING, "US", ("20.0.0.0/11", "40.64.0.0/10"),
            ("2603:1000::/25",), 3.0),
    Network(14061, "DigitalOcean, LLC", HOSTING, "US",
            ("159.89.0.0/16", "167.99.0.0/16", "164.90.0.0/16"), ("2604:a880::/32",), 2.0),
    Network(24940, "Hetzner Online GmbH", HOSTING, "DE", ("95.216.0.0/15", "65.21.0.0/16",
            "5.9.0.0/16"), ("2a01:4f8::/32", "2a01:4f9::/32"), 2.0),
    Network(16276, "OVH SAS", HOSTING, "FR", ("51.68.0.0/16", "54.36.0.0/14"), ("2001:41d0::/32",),
            1.5),
    Network(63949, "Akamai Connected Cloud", HOSTING, "US", ("172.104.0.0/15", "139.162.0.0/16"),
            ("2600:3c00::/27",), 1.0),
    Network(20473, "The Constant Company, LLC", HOSTING, "US", ("45.32.0.0/16", "149.28.0.0/16"),
            ("2001:19f0::/32",), 1.0),
    Network(51167, "Contabo GmbH", HOSTING, "DE", ("161.97.64.0/18", "5.189.128.0/17"),
            ("2a02:c207::/32",), 1.0),
    Network(31898, "Oracle Corporation", HOSTING, "US", ("129.146.0.0/16", "150.136.0.0/16"), (),
            0.8),
    Network(45102, "Alibaba (US) Technology Co., Ltd.", HOSTING, "SG", ("47.74.0.0/15",), (), 0.8),
    Network(132203, "Tencent Building, Kejizhongyi Avenue", HOSTING, "CN", ("43.128.0.0/14",), (),
            0.6),
    # Commercial VPN providers (their exits are flagged vpn per address).
    Network(9009, "M247 Europe SRL", VPN, "RO", ("146.70.0.0/16", "185.156.172.0/22"), (), 3.0),
    Network(60068, "Datacamp Limited", VPN, "GB", ("89.187.160.0/19", "143.244.32.0/19"), (), 2.0),
    Network(39351, "31173 Services AB", VPN, "SE", ("193.138.218.0/24", "185.213.154.0/24"), (),
            1.0),
    Network(136787, "TEFINCOM S.A.", VPN, "PA", ("37.120.128.0/17",), (), 1.5),
    Network(62240, "Clouvider Limited", VPN, "GB", ("45.134.212.0/22",), (), 0.8),
    # Corporate egress (enterprise VPNs and secure web gateways).
    Network(53813, "ZSCALER, INC.", CORPORATE, "US", ("165.225.0.0/17", "136.226.0.0/16"), ()),
    Network(2686, "AT&T Global Network Services, LLC", CORPORATE, "US", ("32.64.0.0/11",), ()),
    Network(8220, "COLT Technology Services Group Limited", CORPORATE, "GB", ("212.36.0.0/17",),
            ()),
    # Networks hosting Tor exits.
    Network(60729, "Stiftung Erneuerbare Freiheit", TOR, "DE", ("185.220.100.0/22",), (), 3.0),
    Network(53667, "FranTech Solutions", TOR, "US", ("209.141.32.0/19", "198.98.48.0/20"), (), 1.5),
    Network(208323, "Foundation for Applied Privacy", TOR, "AT", ("109.70.100.0/24",), (), 1.0),
    Network(4224, "The Calyx Institute", TOR, "US", ("162.247.72.0/22",), (), 1.0),
    Network(197422, "Tetaneutral.net", TOR, "FR", ("185.129.61.0/24",), (), 0.5),
)  # fmt: skip


@dataclass(slots=True)
class AddressInfo:
    """Enrichment of one address, fixed once the address is first handed out."""

    network: Network
    anon: tuple[str, ...] = ()
    confidence: int | None = None
    provider: str | None = None
    last_seen: str | None = None
    fragment: str = ""


CGNAT_POOL = 48
TOR_EXITS = 420
VPN_EXITS_PER_NETWORK = 60
# Share of carrier-grade NAT addresses a mobile-proxy network shares with real users.
CGNAT_PROXY_SHARE = 0.08


@dataclass
class World:
    """All networks plus every address handed out so far, with its enrichment.

    Deterministic: the networks are fixed, the shared pools (carrier-grade NAT egress,
    Tor exits, VPN exits) come from ``seed``, and every other random choice comes from
    the caller's ``random.Random``. An address's flags are decided when it is handed out,
    so every line that carries it carries the same enrichment. ``start`` (epoch seconds)
    dates the flags' ``last_seen``. ``enrich`` controls whether trace lines carry the
    enrichment fields.
    """

    seed: int = 0
    start: float = 0.0
    enrich: bool = True
    networks: tuple[Network, ...] = _NETWORKS
    addresses: dict[str, AddressInfo] = field(default_factory=dict)
    _by_kind: dict[str, list[Network]] = field(default_factory=dict)
    _by_asn: dict[int, Network] = field(default_factory=dict)
    _v4: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    _v6: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    cgnat: dict[int, list[str]] = field(default_factory=dict)
    tor_exits: list[str] = field(default_factory=list)
    vpn_exits: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for net in self.networks:
            self._by_kind.setdefault(net.kind, []).append(net)
            self._by_asn[net.asn] = net
            self._v4[net.asn] = [_span(p) for p in net.v4]
            self._v6[net.asn] = [_span(p) for p in net.v6]
        rng = random.Random(f"{self.seed}/world")
        for net in self._by_kind[MOBILE]:
            pool = [self.v4(rng, net) for _ in range(CGNAT_POOL)]
            for ip in pool:
                if rng.random() < CGNAT_PROXY_SHARE:
                    self.flag(
                        ip,
                        "residential_proxy",
                        rng.randint(10, 55),
                        "mobile-proxy",
                        self.seen(rng, 30),
                    )
            self.cgnat[net.asn] = pool
        for _ in range(TOR_EXITS):
            ip = self.v4(rng, self.pick(rng, TOR))
            self.flag(ip, "tor", rng.choice((99, 99, 99, 95, 90)), None, self.seen(rng, 3))
            self.tor_exits.append(ip)
        for net in self._by_kind[VPN]:
            exits = []
            for _ in range(VPN_EXITS_PER_NETWORK):
                ip = self.v4(rng, net)
                self.flag(ip, "vpn", rng.randint(70, 99), None, self.seen(rng, 7))
                exits.append(ip)
            self.vpn_exits[net.asn] = exits

    def seen(self, rng: random.Random, within_days: int) -> str:
        """A ``last_seen`` date within the days before the trace starts."""
        when = self.start - rng.uniform(0, within_days) * 86400.0
        return time.strftime("%Y-%m-%d", time.gmtime(when))

    # --- picking networks -------------------------------------------------------------

    def network(self, asn: int) -> Network:
        return self._by_asn[asn]

    def of_kind(self, kind: str, country: str | None = None) -> list[Network]:
        nets = self._by_kind[kind]
        if country is not None:
            local = [n for n in nets if n.country == country]
            if local:
                return local
        return nets

    def pick(self, rng: random.Random, kind: str, country: str | None = None) -> Network:
        nets = self.of_kind(kind, country)
        return rng.choices(nets, weights=[n.weight for n in nets])[0]

    # --- handing out addresses ----------------------------------------------------------

    def v4(self, rng: random.Random, net: Network) -> str:
        first, size = rng.choice(self._v4[net.asn])
        # skip .0 and .255 so addresses look like hosts
        while True:
            value = first + rng.randrange(size)
            if 0 < value & 0xFF < 255:
                break
        return self.register(str(ipaddress.IPv4Address(value)), net)

    def has_v6(self, net: Network) -> bool:
        return bool(self._v6[net.asn])

    def v6_prefix(self, rng: random.Random, net: Network) -> int:
        """A random /64 inside the network (as an int with the low 64 bits zero)."""
        first, size = rng.choice(self._v6[net.asn])
        return ((first + rng.randrange(size)) >> 64) << 64

    def v6(self, rng: random.Random, net: Network, prefix64: int | None = None) -> str:
        """An address in ``prefix64`` (or a random /64 of the network), random interface ID."""
        if prefix64 is None:
            prefix64 = self.v6_prefix(rng, net)
        address = ipaddress.IPv6Address(prefix64 | rng.getrandbits(64))
        return self.register(str(address), net)

    def register(self, ip: str, net: Network) -> str:
        if ip not in self.addresses:
            self.addresses[ip] = AddressInfo(net, anon=net.anon)
        return ip

    def flag(
        self,
        ip: str,
        kind: str,
        confidence: int,
        provider: str | None,
        last_seen: str | None,
    ) -> None:
        """Add an anonymizer flag to an address (the first confidence given sticks)."""
        info = self.addresses[ip]
        if kind in info.anon:
            return
        info.anon = (*info.anon, kind)
        if info.confidence is None:
            info.confidence = confidence
            info.provider = provider
            info.last_seen = last_seen
        info.fragment = ""

    # --- trace fragments ----------------------------------------------------------------

    def fragment(self, ip: str) -> str:
        """The ``"ip": ..., "asn": ...`` part of a trace line (cached per address)."""
        info = self.addresses[ip]
        if info.fragment:
            return info.fragment
        fields: dict[str, object] = {"ip": ip}
        if self.enrich:
            net = info.network
            fields.update(asn=net.asn, as_org=net.org, country=net.country)
            if info.anon:
                fields["anon"] = info.anon
                if info.confidence is not None:
                    fields["anon_confidence"] = info.confidence
        info.fragment = trace_fields(**fields)
        return info.fragment


def _span(prefix: str) -> tuple[int, int]:
    net = ipaddress.ip_network(prefix)
    return int(net.network_address), net.num_addresses
