"""Notifications: a Prefect webhook block plus the automations in infra/automations.yaml.

The flow only emits events (flows/record/publish.py); who hears about them is server
configuration, so a team can add Slack or e-mail actions in the Prefect UI without touching the
code.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

from tasks.errors import InputError

WEBHOOK_ENV = "SHRINKFLOW_NOTIFY_URL"
BLOCK_NAME = "shrinkflow-notify"
AUTOMATIONS = Path("infra") / "automations.yaml"


def apply_notifications(root: Path) -> str:
    """Point the automations at the webhook named by $SHRINKFLOW_NOTIFY_URL on the current Prefect
    server; say what was done (or how to turn notifications on)."""
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        return f"notifications off: set {WEBHOOK_ENV} to a webhook URL to be told of failures and new champions"
    path = root / AUTOMATIONS
    if not path.exists():
        raise InputError(f"{WEBHOOK_ENV} is set but {path.resolve()} is missing; restore it from the "
                         "shrinkflow repository")
    block = CustomWebhookNotificationBlock(
        name=BLOCK_NAME, url=url, json_data={"subject": "{{subject}}", "text": "{{body}}"},
    )
    block_id = block.save(BLOCK_NAME, overwrite=True)
    automations = yaml.safe_load(path.read_text())["automations"]
    with get_client(sync_client=True) as client:
        for spec in automations:
            for action in spec["actions"]:
                if action["type"] == "send-notification":
                    action["block_document_id"] = str(block_id)
            for old in client.read_automations_by_name(spec["name"]):
                client.delete_automation(old.id)
            client.create_automation(AutomationCore.model_validate(spec))
    return f"notifications on: {len(automations)} automations send to {WEBHOOK_ENV}"
