"""Every device status, VM state and host state change goes through its transition.

The transitions (hostplane/core/device_states.py, vm_states.py, host_states.py) check
where a change may start from; an assignment by hand elsewhere skips that check. This
walks the code (ast) of the services for such assignments.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALKED = ("agent", "controller", "hostplane")
CORE = os.path.join("hostplane", "core")
# attributes only a transition may set: a device's status and holder, a VM's state and
# move, a host's status and admin state
GUARDED = {"status", "state", "vm", "moving_to"}
# (file, attribute) set by hand on purpose, with why
ALLOWED = {
    (os.path.join("controller", "networks.py"), "status"):
        "a network's push record on one host, neither a device nor a VM",
}


def hand_assignments(tree):
    """(line, attribute) of each `x.attr = ...` of a guarded attribute (not on `self`), each
    SQL `.values(attr=...)` of one, and each `setattr` whose attribute is not a constant
    outside the guarded ones."""
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for part in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if (isinstance(part, ast.Attribute) and part.attr in GUARDED
                        and not (isinstance(part.value, ast.Name) and part.value.id == "self")):
                    found.append((node.lineno, part.attr))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "values"):   # UPDATE ... SET status = ...
            found += [(node.lineno, keyword.arg) for keyword in node.keywords
                      if keyword.arg in GUARDED]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "setattr" and len(node.args) == 3):
            name = node.args[1]
            if not isinstance(name, ast.Constant) or name.value in GUARDED:
                found.append((node.lineno, "setattr"))
    return found


def test_no_state_is_set_by_hand_outside_the_transitions():
    found, walked = [], 0
    for package in WALKED:
        for folder, _dirs, files in os.walk(os.path.join(REPO, package)):
            if os.path.relpath(folder, REPO).startswith(CORE):
                continue
            for file in files:
                if not file.endswith(".py"):
                    continue
                path = os.path.join(folder, file)
                relative = os.path.relpath(path, REPO)
                with open(path) as source:
                    tree = ast.parse(source.read())
                walked += 1
                found += [f"{relative}:{line} sets {attr}"
                          for line, attr in hand_assignments(tree)
                          if (relative, attr) not in ALLOWED]
    assert walked > 50
    assert found == []


def test_the_walk_finds_hand_assignments():
    tree = ast.parse("row.status = 'x'\nvm.host_id, vm.state = 1, 2\nself.state = 3\n"
                     "setattr(host, field, value)\nsetattr(host, 'name', 'n')\n"
                     "session.execute(update(Device).values(vm=None, name='n'))\n")
    assert sorted(hand_assignments(tree)) == [(1, "status"), (2, "state"), (4, "setattr"),
                                              (6, "vm")]
