"""Request bodies the agent and the controller both accept, written once.

The controller forwards a VM's name, size, bridges and stop to the agent in the shapes
it accepted itself, so one model checks both ends: nothing the controller takes is
refused by the agent for a rule it did not know.
"""

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hostplane.core.ids import check_name

BRIDGE_NAME = r"^[A-Za-z0-9_.-]{1,15}$"   # a Linux interface name


class StrictBody(BaseModel):
    """Unknown fields are a 400, never silently dropped."""
    model_config = ConfigDict(extra="forbid")


class NetworkRef(StrictBody):
    bridge: str = Field(pattern=BRIDGE_NAME)


class VmBasics(StrictBody):
    """What every new VM names: itself, its size and the bridges it joins."""
    name: str
    vcpus: int = Field(ge=1, le=1024)
    memory_mib: int = Field(ge=16, le=16 * 1024 * 1024)
    networks: list[NetworkRef] = Field(default_factory=list, max_length=16)

    _name = field_validator("name")(lambda v: check_name(v, "VM name"))   # InvalidId: a ValueError


class VmStop(StrictBody):
    force: bool = False
