import Subquadratic
print(BuildInfo.summary)
