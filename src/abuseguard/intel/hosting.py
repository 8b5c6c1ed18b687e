"""Autonomous systems of the large cloud and hosting providers.

Traffic from these networks comes from servers, not from people at a keyboard: scripts,
rented GPUs, VPN and proxy exits. `NetworkPolicy` treats them as hosting networks (a
signal, not a verdict: CI runners, corporate egress and some VPNs live there too).

`BUILTIN_HOSTING_ASNS` is a deliberately short list of large, unambiguous cloud and
server-rental networks, each commented with its owner. Left out on purpose:

- CDNs and edge networks that also carry end users on behalf of real people (Cloudflare
  AS13335, which includes WARP; Akamai's CDN AS20940; Fastly AS54113);
- consumer ISPs run by hosting groups (OVH Telecom AS35540);
- networks whose ownership changes often or is unclear.

Add your own with ``hosting_asns(extra=...)``; MaxMind's ``is_hosting_provider`` flag
(Anonymous IP / Anonymous Plus) covers the long tail.
"""

from __future__ import annotations

from collections.abc import Iterable

BUILTIN_HOSTING_ASNS: frozenset[int] = frozenset(
    {
        # Amazon Web Services
        16509,  # AMAZON-02, Amazon.com, Inc. (EC2 and most AWS regions)
        14618,  # AMAZON-AES, Amazon.com, Inc. (us-east-1)
        8987,  # AMAZON EXPANSION, Amazon Data Services Ireland Ltd
        # Google
        396982,  # GOOGLE-CLOUD-PLATFORM, Google LLC
        15169,  # GOOGLE, Google LLC (older Compute Engine ranges; also Google's own crawlers)
        # Microsoft
        8075,  # MICROSOFT-CORP-MSN-AS-BLOCK, Microsoft Corporation (Azure)
        # Oracle
        31898,  # ORACLE-BMC-31898, Oracle Corporation (Oracle Cloud Infrastructure)
        # IBM
        36351,  # SOFTLAYER, IBM Cloud (formerly SoftLayer Technologies)
        # Alibaba
        45102,  # ALIBABA-CN-NET, Alibaba US Technology Co., Ltd. (Alibaba Cloud international)
        37963,  # CNNIC-ALIBABA-CN-NET-AP, Hangzhou Alibaba Advertising Co. (Aliyun, China)
        # Tencent
        132203,  # TENCENT-NET-AP-CN, Tencent Building, Kejizhongyi Avenue (Tencent Cloud)
        45090,  # TENCENT-NET-AP, Shenzhen Tencent Computer Systems Company Limited
        # Huawei
        136907,  # HWCLOUDS-AS-AP, Huawei Clouds
        # DigitalOcean
        14061,  # DIGITALOCEAN-ASN, DigitalOcean, LLC
        # Akamai Connected Cloud (formerly Linode)
        63949,  # AKAMAI-LINODE-AP, Akamai Technologies, Inc. (Linode)
        # Vultr
        20473,  # AS-CHOOPA, The Constant Company, LLC (Vultr)
        # OVHcloud
        16276,  # OVH, OVH SAS
        # Hetzner
        24940,  # HETZNER-AS, Hetzner Online GmbH
        213230,  # HETZNER-CLOUD2-AS, Hetzner Online GmbH (Hetzner Cloud)
        # Scaleway
        12876,  # Online SAS / Scaleway S.A.S.
        # Contabo
        51167,  # CONTABO, Contabo GmbH
        # Leaseweb
        60781,  # LEASEWEB-NL-AMS-01, Leaseweb Netherlands B.V.
        16265,  # LEASEWEB-NETWORK, Leaseweb Network B.V.
        30633,  # LEASEWEB-USA-WDC, Leaseweb USA, Inc.
        # IONOS
        8560,  # IONOS-AS, IONOS SE (formerly 1&1)
        # GoDaddy
        26496,  # AS-26496-GO-DADDY-COM-LLC, GoDaddy.com, LLC
        # Server and VPN-exit hosting
        9009,  # M247, M247 Europe SRL
        60068,  # CDN77, Datacamp Limited
        36352,  # AS-COLOCROSSING, ColoCrossing
        53667,  # PONYNET, FranTech Solutions (BuyVM)
        8100,  # ASN-QUADRANET-GLOBAL, QuadraNet Enterprises LLC
        40676,  # AS40676, Psychz Networks
        21859,  # ZEN-ECN, Zenlayer Inc
        47583,  # AS-HOSTINGER, Hostinger International Limited
        54290,  # HOSTWINDS, Hostwinds LLC.
    }
)

_ASN_MAX = 2**32 - 1


def parse_asn(value: int | str) -> int:
    """An ASN from an int or text (``16509``, ``"16509"``, ``"AS16509"``); ValueError if bad.

    Valid ASNs are 1..4294967295 (0 is reserved and means "unknown" in `NetworkFacts`).
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if text[:2].upper() == "AS":
            text = text[2:]
        if text.isascii() and text.isdigit():
            number = int(text)
    if number is None or not 1 <= number <= _ASN_MAX:
        raise ValueError(f"not an AS number: {value!r} (expected 1..{_ASN_MAX} or 'AS<n>')")
    return number


def hosting_asns(extra: Iterable[int | str] = (), include_builtin: bool = True) -> frozenset[int]:
    """The hosting ASNs to use: the built-in list (unless excluded) plus `extra`.

    Raises ValueError naming the first entry of `extra` that is not an AS number.
    """
    if isinstance(extra, str | bytes):
        raise ValueError(f"extra: expected a collection of AS numbers, got {extra!r}")
    chosen = {parse_asn(value) for value in extra}
    if include_builtin:
        chosen |= BUILTIN_HOSTING_ASNS
    return frozenset(chosen)
