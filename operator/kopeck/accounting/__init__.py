"""kopeck.accounting: the pure money math — prices, attribution, idle, periods, budgets.

No I/O here: every figure in an Allocation or CostPolicy status can be reproduced from
recorded inputs by calling these functions.
"""
