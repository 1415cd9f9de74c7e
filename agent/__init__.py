"""aiinfra's host agent (`aiinfra-agent`): runs on the inference box, never imports Ansible."""
