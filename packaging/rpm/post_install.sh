systemd-sysusers berth.conf || true
systemd-tmpfiles --create berth.conf || true
chgrp berth /etc/berth /etc/berth/config.yaml 2>/dev/null || true
systemctl daemon-reload 2>/dev/null || true
