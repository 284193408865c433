"""PromQL of OpenCost dashboards and docs, verbatim, for tests that run them on kopeck.

Dashboards: github.com/adinhodovic/opencost-mixin, commit 3e12c70a85d943013187947aad6429d7e70e8505,
dashboards_out/opencost-overview.json ("OpenCost / Overview", grafana.com dashboard 22208) and
dashboards_out/opencost-namespace.json ("OpenCost / Namespace", grafana.com 22252); each
constant names its panel. Their template variables $cluster, $job (label_values of
opencost_build_info) and $namespace are filled in by `fill`.

Docs: github.com/opencost/opencost-website, commit 6bdcb9e70f4d598ce5d8787599e1d55f8f2195ca,
docs/integrations/metrics.md, "Example Queries".
"""

from __future__ import annotations

INSTANCE_TYPE_MONTHLY = """topk(10,
  sum(
    node_total_hourly_cost{
      cluster="$cluster",
job="$job"

    }
  ) by (instance_type) * 730
)
"""
"""OpenCost / Overview, panel "Cost by Instance Type"."""


NODES_MONTHLY_TOTAL = """sum(
  node_total_hourly_cost{
    cluster="$cluster",
job="$job"

  }
) by (node, instance_type, arch)
* 730
"""
"""OpenCost / Overview, panel "Nodes Monthly Cost", third target (total)."""


NAMESPACE_MONTHLY = """topk(10,
  sum(
    sum(
      container_memory_allocation_bytes{
        cluster="$cluster",
        job="$job"}
    ) by (namespace, instance)
    * on(instance) group_left()
      (
        node_ram_hourly_cost{
          cluster="$cluster",
          job="$job"} / (1024 * 1024 * 1024) * 730
      )
    +
    sum(
      container_cpu_allocation{
        cluster="$cluster",
        job="$job"}
    ) by (namespace, instance)
    * on(instance) group_left()
      (
        node_cpu_hourly_cost{
          cluster="$cluster",
          job="$job"} * 730
      )
  ) by (namespace)
)
"""
"""OpenCost / Overview, panels "Namespace Monthly Cost" (first target) and "Cost by Namespace"."""


NAMESPACE_HOURLY = """sum(
  sum(
    container_memory_allocation_bytes{
      cluster="$cluster",
job="$job"
,
namespace="$namespace"

    }
  )
  by (namespace, instance)
  * on(instance) group_left()
  (
    avg(
      node_ram_hourly_cost{
        cluster="$cluster",
job="$job"

      }
    ) by (instance) / (1024 * 1024 * 1024) * 1
  )
)

+
sum(
  sum(
    container_cpu_allocation{
      cluster="$cluster",
job="$job"
,
namespace="$namespace"

    }
  )
  by (namespace, instance)
  * on(instance) group_left()
  (
    avg(
      node_cpu_hourly_cost{
        cluster="$cluster",
job="$job"

      }
    ) by (instance) * 1
  )
)

+
sum(
  sum(
    container_gpu_allocation{
      cluster="$cluster",
job="$job"
,
namespace="$namespace"

    }
  )
  by (namespace, instance)
  * on(instance) group_left()
  (
    avg(
      node_gpu_hourly_cost{
        cluster="$cluster",
job="$job"

      }
    ) by (instance) * 1
  )
)

+
sum(
  sum(
    kube_persistentvolume_capacity_bytes{
      cluster="$cluster",
job="$job"

    }
    / (1024 * 1024 * 1024)
  ) by (persistentvolume)
  *
  sum(
    pv_hourly_cost{
      cluster="$cluster",
job="$job"

    }
  ) by (persistentvolume)
  * on(persistentvolume) group_left(cluster, namespace, persistentvolumeclaim) (
    label_replace(
      kube_persistentvolumeclaim_info{
        cluster="$cluster",
job="$job"
,
namespace="$namespace"

      },
      "persistentvolume", "$1",
      "volumename", "(.*)"
    )
  ) or vector(0)
) * 1

"""
"""OpenCost / Namespace, panel "Hourly Cost"."""


DOCS_COST_BY_NAMESPACE = (
    "sum by (namespace) (container_cpu_allocation * on (node) group_left node_cpu_hourly_cost"
    " + container_memory_allocation_bytes * on (node) group_left node_ram_hourly_cost"
    " / (1024 * 1024 * 1024))"
)
"""OpenCost docs, metrics.md, "Cost by Namespace": CPU and memory cost per hour by namespace."""

DOCS_STORAGE_COST_BY_NAMESPACE = (
    "sum by (namespace) (pod_pvc_allocation * on (persistentvolume) group_left pv_hourly_cost"
    " / (1024 * 1024 * 1024))"
)
"""OpenCost docs, metrics.md, "Storage Cost": persistent volume cost per hour by namespace."""

DOCS_TOTAL_CLUSTER_MONTHLY = "sum(node_total_hourly_cost) * 730"
"""OpenCost docs, metrics.md, "Total Cluster Cost": monthly cost of all nodes."""


def fill(expr: str, **variables: str) -> str:
    """The query with Grafana's $variables replaced (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", variables[name])
    return expr

