#!/bin/sh
# berth: create the service user (member of docker) and directories; never start or enable
# the service here: the operator must set worker_id and the API key first.
systemd-sysusers berth.conf || true
systemd-tmpfiles --create berth.conf || true
chgrp berth /etc/berth /etc/berth/config.yaml 2>/dev/null || true
systemctl daemon-reload 2>/dev/null || true
