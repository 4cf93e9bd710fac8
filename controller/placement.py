"""Place, then claim atomically: the bridge between the pure scheduler and the database.

Placement runs on a lock-free snapshot, cached per process and refreshed host by host
(controller.snapshot_cache, built by controller.placement_views): fast, and wrong only when
another request wins the race. The claim (controller.claims) then re-runs the same
scheduler on the chosen host's rows under its write lock. A lost race retries placement;
capacity and devices are reserved before the agent is called and given back if it fails.
Refusals and their counters: controller.refusals. Imports run one way: this module uses
those, none of them uses this one.
"""

from sqlalchemy.exc import IntegrityError

from controller.claims import NoLongerFits, claim_on, name_taken
from controller.refusals import count, unplaceable
from controller.placement_views import TIE_BREAKS
from controller.snapshot_cache import CREATE_MAX_AGE_S, cache_for
from hostplane.config import ConfigError
from hostplane.core.scheduler import STRATEGIES, Policy
from hostplane.errors import Conflict


def policy_from(config):
    scheduler = config["scheduler"]
    return Policy(cpu_overcommit=float(scheduler["cpu_overcommit"]),
                  memory_overcommit=float(scheduler["memory_overcommit"]),
                  strategy_mode=scheduler["strategy_mode"])


def strategy_from(config):
    """`[scheduler] strategy`, the ranking of requests that name none."""
    return _scheduler_choice(config, "strategy", STRATEGIES)


def tie_break_from(config):
    """`[scheduler] tie_break`: how hosts of equal score are ordered (placement_views)."""
    return _scheduler_choice(config, "tie_break", TIE_BREAKS)


def _scheduler_choice(config, key, allowed):
    value = config["scheduler"][key]
    if value not in allowed:
        raise ConfigError(f"[scheduler] {key} must be one of {', '.join(allowed)}, "
                          f"not {value!r}")
    return value


def explain(db, request, policy):
    """What a create or attach would do; changes nothing (counted as an `explain`)."""
    placement = _placement(db, request, policy)
    count("explain", placement)
    return placement


def _placement(db, request, policy, every_host=True, first=False):
    """Explain judges every host (`place`); a create or attach takes the best host
    through the capacity index (`choose`) and holds its choice in the snapshot until the
    claim settles; a create's first attempt may use a snapshot checked a moment ago
    (snapshot_cache.CREATE_MAX_AGE_S), since its claim re-checks on the host's own rows."""
    return cache_for(db).place(request, policy, every_host, hold=not every_host,
                               max_age=CREATE_MAX_AGE_S if first else 0.0)


def place_and_claim(db, request, policy, new_vm, attempts=5):
    """Reserve devices and capacity for `request`; returns (the chosen host's row as the
    claim locked it, [device rows' ids], the host NUMA node chosen for the VM or None).

    `new_vm` (a dict of Vm columns) is inserted in the claiming transaction; None when
    devices are added to `request.existing_vm`.
    """
    operation = "create" if new_vm is not None else "attach"
    # only a new VM's claim re-checks all its placement asks on the host's own rows
    placement = _placement(db, request, policy, every_host=False, first=new_vm is not None)
    for _ in range(attempts):
        if placement.chosen is None:
            count(operation, placement)
            raise unplaceable(request, placement, db)
        claimed = None
        host_id = placement.chosen.host_id
        # a create's claim may take the host's rows as the cache read them, if unchanged
        as_read = cache_for(db).as_read(host_id) if new_vm is not None else None
        try:
            claimed = db.transaction(lambda session: claim_on(
                session, db, request, policy, host_id, new_vm, as_read))
        except NoLongerFits:
            pass
        except IntegrityError:   # the name is in use (or a racing create of it committed)
            raise name_taken(request) from None
        finally:   # a create's claim as committed, which the cache may take as it held it
            cache_for(db).settled(request, claimed if new_vm is not None else None)
        if claimed is not None:
            count(operation, placement)
            chosen, host = claimed
            return host, list(chosen.devices), chosen.numa_node
        placement = _placement(db, request, policy, every_host=False)
    count(operation, placement, "contended")
    raise Conflict("lost the race for these devices several times; try again",
                   code="claim_contended")

