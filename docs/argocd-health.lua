-- Argo CD health check of stagecoach.dev/ImageBuild (argocd-cm key
-- resource.customizations.health.stagecoach.dev_ImageBuild), from docs/argocd-health.lua.
--   Healthy      the build of the current generation succeeded (phase Succeeded, Ready=True)
--   Degraded     it failed (phase Failed, Succeeded=False): the failure's reason and message
--   Progressing  anything else, and any status written for an older generation
-- Plain Lua 5.1 (Argo CD runs gopher-lua); scripts/check-gitops.sh runs it on lua5.1 and
-- lua5.4 against docs/fixtures.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(value, default)
  if value == nil or value == "" then
    return default
  end
  return tostring(value)
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the build"
  return hs
end

-- A status about an older generation says nothing about the spec that is applied now.
local generation = obj.metadata.generation
if generation ~= nil then
  if status.observedGeneration == nil or status.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = string.format("Waiting for the operator to build generation %d", generation)
    return hs
  end
end

local ready = condition(status, "Ready")
local succeeded = condition(status, "Succeeded")
if generation ~= nil and ready ~= nil and ready.observedGeneration ~= nil
    and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to build generation %d", generation)
  return hs
end

local phase = text(status.phase, "Pending")

if phase == "Failed" or (succeeded ~= nil and succeeded.status == "False") then
  hs.status = "Degraded"
  local failure = status.failure
  if failure ~= nil then
    hs.message = text(failure.reason, "Failed") .. ": " .. text(failure.message, "the build failed")
  elseif ready ~= nil then
    hs.message = text(ready.reason, "Failed") .. ": " .. text(ready.message, "the build failed")
  else
    hs.message = "The build failed"
  end
  return hs
end

if phase == "Succeeded" or (ready ~= nil and ready.status == "True") then
  hs.status = "Healthy"
  local image = status.image
  if image ~= nil and image.reference ~= nil and image.digest ~= nil then
    hs.message = "Pushed " .. image.reference .. "@" .. image.digest
  else
    hs.message = text(ready ~= nil and ready.message or nil, "The build succeeded")
  end
  return hs
end

-- Pending, Cloning, Building, Pushing: say how far the stages are.
hs.status = "Progressing"
local done, total = 0, 0
if status.stages ~= nil then
  for _, stage in ipairs(status.stages) do
    total = total + 1
    if stage.phase == "Succeeded" then
      done = done + 1
    end
  end
end
if total > 0 then
  hs.message = string.format("%s: %d/%d stages done", phase, done, total)
else
  hs.message = phase
end
return hs
