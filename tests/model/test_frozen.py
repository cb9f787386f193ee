"""model.frozen.make: the same instance as the dataclass's own __init__ would build."""

import json

from reconciler.model.frozen import field_names, make
from reconciler.model.manifest import ManifestDevice
from reconciler.pki.manifest import manifest_from_dict


def test_make_equals_init_and_hashes_alike():
    values = {"name": "a", "wireguard_public_key": "k", "tunnel_ips": ("10.0.0.1",),
              "cert_sha256": "f", "routes": (), "relay": False, "endpoint": None, "tags": (),
              "labels": (), "keepalive": None, "exit_node": False, "use_exit_node": None,
              "masquerade_routes": True}
    assert set(values) == field_names(ManifestDevice)
    made, built = make(ManifestDevice, dict(values)), ManifestDevice(**values)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)


def test_manifest_from_dict_gives_every_device_field():
    doc = {"version": 1, "org": "o", "serial": 1, "commit": "c", "issued_at": 0,
           "not_after": 1, "cidr_v4": "10.0.0.0/24", "listen_port": 51820, "keepalive": 25,
           "devices": [{"name": "a", "wg": "A" * 43 + "=", "ips": ["10.0.0.1"],
                        "fp": "A" * 43, "relay": True, "endpoint": "1.2.3.4:5"}]}
    dev = manifest_from_dict(json.loads(json.dumps(doc))).devices[0]
    assert set(vars(dev)) == field_names(ManifestDevice)
    assert dev == ManifestDevice("a", "A" * 43 + "=", ("10.0.0.1",), "A" * 43, relay=True,
                                 endpoint="1.2.3.4:5")

